"""gunicorn settings: gevent workers serving sync Django views (README: Architecture).

Nothing from Django or psycopg may be imported here, and there is no preload: gevent must
patch the standard library before psycopg is imported, in each worker.
"""

import os

bind = os.environ.get("APERTURE_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("APERTURE_WORKER_CONNECTIONS", "2000"))
# Image generation upstreams take 5-60 s; gevent workers keep heartbeating meanwhile.
timeout = int(os.environ.get("APERTURE_WORKER_TIMEOUT", "180"))
graceful_timeout = 30
keepalive = 5
preload_app = False
accesslog = os.environ.get("APERTURE_ACCESS_LOG", "-")
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
