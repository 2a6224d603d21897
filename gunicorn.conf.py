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
import socket
import sys
from pathlib import Path
from typing import Any

bind = os.environ.get("APERTURE_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
worker_class = "gevent"
_TRUE = ("true", "on", "ok", "y", "yes", "1")  # django-environ's, as settings read the switch
_MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")
# Whether each worker listens on a socket of its own, as the master decided it when it
# started (`_decide_listening`). A reload (HUP) reads this file again, but gunicorn sets the
# listening sockets up only as the master starts: the new workers must listen the same way.
_DECIDED = "_APERTURE_REUSE_PORT_DECIDED"
reuse_port = os.environ.get(_DECIDED) == "true"


def _can_share_out(addresses: list[Any], workers: int) -> bool:
    """A socket per worker is possible: TCP addresses with a port named (a Unix socket can't
    be shared out, and port 0 would give each worker a port of its own), and more than one
    worker (a lone worker's own socket would lose its queue with it)."""
    return workers > 1 and all(isinstance(a, tuple) and a[1] for a in addresses)


def _kernel_hands_on(migrate_req: Path = _MIGRATE_REQ) -> bool:
    """Whether a stopping worker's waiting connections go to another worker's socket rather
    than being reset (`net.ipv4.tcp_migrate_req`, Linux 5.14 and later)."""
    try:
        return migrate_req.read_text().strip() == "1"
    except OSError:  # not Linux, or older than 5.14
        return False


def _wanted() -> str:
    """APERTURE_REUSE_PORT as set: "auto", or a switch."""
    return os.environ.get("APERTURE_REUSE_PORT", "auto").strip().lower()


def _reuse_port(
    addresses: list[Any], wanted: str, workers: int, migrate_req: Path = _MIGRATE_REQ
) -> bool:
    """Whether each worker accepts on a listening socket of its own (SO_REUSEPORT; gunicorn
    then opens none in the master), the kernel sharing new connections out among them by a
    hash of each client's address and port. On one shared socket the worker that woke first
    took a burst of keep-alive connections, at times every one of them, and the others idled
    (README: Production deployment). But a worker that stops (a reload, a crash) resets the
    connections still waiting in its own socket unless the kernel hands them on, so "auto"
    is on only where it does. `wanted` is as `_wanted` reads it."""
    if not _can_share_out(addresses, workers):
        return False
    return _kernel_hands_on(migrate_req) if wanted == "auto" else wanted in _TRUE


def _decide_listening(server: Any) -> None:
    """Decide once, as the master starts, from every bind it has (the command line's too).
    A binary upgrade (USR2) keeps the old master's way: its listening sockets, or none."""
    if server.master_pid:  # re-executed by USR2: GUNICORN_FD lists the old master's sockets
        if not os.environ.get("GUNICORN_FD"):
            server.log.error(
                "A binary upgrade (USR2) is not supported with a listening socket per "
                "worker: restart instead"
            )
            sys.exit(1)
        os.environ[_DECIDED] = "false"
    elif _DECIDED not in os.environ:
        decided = _reuse_port(server.cfg.address, _wanted(), server.cfg.workers)
        os.environ[_DECIDED] = "true" if decided else "false"
    server.cfg.set("reuse_port", os.environ[_DECIDED] == "true")


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


def _why_taken(address: tuple[str, int]) -> str:
    """Why a worker could not listen on `address` as a socket of its own ("" if it can): the
    address is not this host's, or another process listens there (another gunicorn's workers
    with SO_REUSEPORT too, which would silently share its connections with ours). Only a
    refused connection says nothing listens: a timeout may be a listener too busy to answer."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    loopback = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - a lookup
    try:
        with socket.create_connection((loopback, port), timeout=5):
            return "another process is listening there"
    except ConnectionRefusedError:
        return ""
    except OSError as exc:
        return f"could not tell whether another process listens there ({exc})"


def _shown(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _refuse_a_taken_address(server: Any) -> None:
    """With a socket per worker the master listens on nothing, so a taken address would only
    show as workers failing to boot over and over: refuse it at once, as gunicorn does with a
    shared socket."""
    if not server.cfg.reuse_port:
        return
    for address in server.cfg.address:
        if why := _why_taken(address):
            server.log.error("Cannot listen at %s: %s", _shown(address), why)
            sys.exit(1)


def _control_socket(server: Any) -> None:
    """gunicornc's socket (`gunicornc -s var/gunicorn-8000.ctl`), one per port in the var dir
    the service may write: gunicorn's default is under $HOME (or $XDG_RUNTIME_DIR), which the
    systemd units make read-only (ProtectHome), and which every master of a user shared."""
    ports = [str(address[1]) for address in server.cfg.address if isinstance(address, tuple)]
    name = f"gunicorn-{ports[0]}.ctl" if ports else "gunicorn.ctl"
    server.cfg.set("control_socket", str(_VAR_DIR / name))


def when_ready(server: Any) -> None:
    if server.cfg.reuse_port:  # gunicorn's "Listening at:" named no socket: the master has none
        addresses = ", ".join(_shown(address) for address in server.cfg.address)
        server.log.info("Each worker listens at %s on a socket of its own", addresses)
    elif (
        _wanted() == "auto"
        and _can_share_out(server.cfg.address, server.cfg.workers)
        and not _kernel_hands_on()
    ):
        server.log.info(
            "The workers share one listening socket; set net.ipv4.tcp_migrate_req=1 for a "
            "socket each, which shares connections out evenly (docs/deployment.md)"
        )


def on_starting(server: Any) -> None:
    """Decide how the workers listen and refuse an address taken already; name the control
    socket; start the metrics afresh."""
    _decide_listening(server)
    _refuse_a_taken_address(server)
    _control_socket(server)
    _start_metrics_afresh()


def _start_metrics_afresh() -> None:
    """An empty metrics directory: counters restart from zero with the master, as Prometheus
    expects of a restarted process."""
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
    if not worker.booted:  # it failed before the application loaded: it leased nothing
        return
    try:
        from billing import leases

        leases.return_all()
    except Exception:  # a stopping worker must stop; its leases expire anyway
        server.log.exception("could not give the budget slices back")


def on_exit(server: Any) -> None:
    directory = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""))
    if _own(directory):
        shutil.rmtree(directory, ignore_errors=True)
