"""gunicorn settings: gevent workers serving sync Django views (README: Architecture).

Nothing from Django or psycopg may be imported here, and there is no preload: gevent must
patch the standard library before psycopg is imported, in each worker.

Metrics (docs/metrics.md): each worker writes its samples to PROMETHEUS_MULTIPROC_DIR and a
scrape adds them up. The master sets it before any worker starts (prometheus_client reads it
when a worker first imports it), empties it at start and forgets each worker's live gauges
when the worker exits. By default it is a directory of this master's own under the var dir,
var/prometheus/<master pid>, removed at exit (with any left behind by masters that died), so
two gunicorns never share one; APERTURE_METRICS=false turns the metrics off.
"""

import contextlib
import glob
import os
import shutil
from pathlib import Path
from typing import Any

bind = os.environ.get("APERTURE_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("APERTURE_WORKER_CONNECTIONS", "4000"))
# Image generation upstreams take 5-60 s; gevent workers keep heartbeating meanwhile.
timeout = int(os.environ.get("APERTURE_WORKER_TIMEOUT", "180"))
graceful_timeout = 30
keepalive = 5
preload_app = False
# "-" (stdout) by default; "off" (or /dev/null) skips formatting a line per request at all.
_access_log = os.environ.get("APERTURE_ACCESS_LOG", "-")
accesslog = None if _access_log in ("off", "/dev/null") else _access_log
# The path without its query string: native clients may send their gateway key as ?key=.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
errorlog = "-"
# Headers and request lines far above anything legitimate are refused by gunicorn itself.
limit_request_field_size = 16384

# APERTURE_LOG_FORMAT=json: gunicorn's own lines (start-up, worker events, the access log)
# are JSON objects too, so that every line of the output parses (README: Logs).
if os.environ.get("APERTURE_LOG_FORMAT", "text") == "json":
    from gunicorn.glogging import Logger
    from pythonjsonlogger.json import JsonFormatter

    class JsonLogger(Logger):  # type: ignore[misc]
        def _set_handler(self, log, output, fmt, stream=None):  # type: ignore[no-untyped-def]
            json_format = JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                datefmt="%Y-%m-%dT%H:%M:%S%z",
            )
            super()._set_handler(log, output, json_format, stream)

    logger_class = JsonLogger

_TRUE = ("true", "on", "ok", "y", "yes", "1")  # django-environ's, as settings read the switch
_VAR_DIR = Path(os.environ.get("APERTURE_VAR_DIR", str(Path(__file__).resolve().parent / "var")))
_OWN_DIRS = _VAR_DIR / "prometheus"  # var/prometheus/<master pid>: one per master
if os.environ.get("APERTURE_METRICS", "true").strip().lower() in _TRUE:
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_OWN_DIRS / str(os.getpid())))


def _own(directory: Path) -> bool:
    return directory.parent == _OWN_DIRS and directory.name.isdigit()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def on_starting(server: Any) -> None:
    """Start the metrics afresh: an empty directory (counters restart from zero with the
    master, as Prometheus expects of a restarted process)."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if _own(directory):
        with contextlib.suppress(FileNotFoundError):
            for left in _OWN_DIRS.iterdir():  # by masters that died without cleaning up
                if left.name.isdigit() and left != directory and not _running(int(left.name)):
                    shutil.rmtree(left, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)
        for private in (_VAR_DIR, _OWN_DIRS, directory):  # 0700, as settings make var/
            with contextlib.suppress(FileExistsError):
                private.mkdir(mode=0o700, parents=True)
        return
    directory.mkdir(parents=True, exist_ok=True)  # an operator's: only our files go
    for name in glob.glob(str(directory / "*.db")):
        os.remove(name)


# prometheus_client.multiprocess's live gauge modes (tests/aperture/test_metrics.py checks
# they agree). Its mark_process_dead() is not imported: importing prometheus_client here
# would create its locks in the master, before gevent patches threading in each worker.
_LIVE_GAUGE_MODES = ("liveall", "livesum", "livemax", "livemin", "livemostrecent")


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited: its counters stay (they must never go down), its live gauges (budget
    holds in flight) go, as prometheus_client's mark_process_dead() does."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    for mode in _LIVE_GAUGE_MODES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, f"gauge_{mode}_{worker.pid}.db"))


def post_worker_init(worker: Any) -> None:
    """The worker has loaded the application: its URLs (and so every view) are imported now
    rather than on the first request, and the garbage collector is tuned for serving
    (aperture/garbage_collection.py)."""
    from django.urls import get_resolver

    from aperture.garbage_collection import tune_for_serving

    get_resolver().url_patterns  # noqa: B018 - imports the URLconf and its views
    tune_for_serving()


def worker_exit(server: Any, worker: Any) -> None:
    """A worker stopping gracefully gives its budget slices back (billing/leases.py) rather
    than leave them held until their leases expire. Imported here, in the worker, where the
    application (and gevent's patching) is already loaded."""
    try:
        from billing import leases

        leases.return_all()
    except Exception:  # a stopping worker must stop; its leases expire anyway
        server.log.exception("could not give the budget slices back")


def on_exit(server: Any) -> None:
    directory = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""))
    if _own(directory):
        shutil.rmtree(directory, ignore_errors=True)
