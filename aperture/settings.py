"""Settings, read from the environment with django-environ.

With no environment at all this is the embedded default: SQLite, secrets and media under
var/, an in-process cache and eager Celery tasks. Production differs only by environment
variables; with APERTURE_PRODUCTION=true every secret must come from the environment.
"""

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import django_stubs_ext
import environ
from django.core.exceptions import ImproperlyConfigured

from aperture.local_secrets import load_or_create, private_dir, private_sqlite

BASE_DIR = Path(__file__).resolve().parent.parent

# `ModelAdmin[ApiKey]` and the like at runtime, as the type stubs write them.
django_stubs_ext.monkeypatch()

env = environ.Env()

PRODUCTION = env.bool("APERTURE_PRODUCTION", default=False)
VAR_DIR = Path(env.str("APERTURE_VAR_DIR", default=str(BASE_DIR / "var")))
DEBUG = env.bool("DEBUG", default=False)


def _secret(name: str, kind: str = "token") -> str:
    """A secret from `NAME`, or the file named by `NAME_FILE`, or (embedded only) var/."""
    value: str = env.str(name, default="")
    file_name = env.str(f"{name}_FILE", default="")
    if not value and file_name:
        value = Path(file_name).read_text().strip()
    if value:
        return value
    if PRODUCTION:
        raise ImproperlyConfigured(
            f"{name} is not set. Set {name} (or {name}_FILE) in the environment: "
            "production never generates or stores its own secrets."
        )
    return load_or_create(private_dir(VAR_DIR) / "secrets", name.lower(), kind)


SECRET_KEY = _secret("SECRET_KEY")
# Comma-separated Fernet keys: the first encrypts, all decrypt (key rotation).
ENCRYPTION_KEYS = [k.strip() for k in _secret("APERTURE_ENCRYPTION_KEYS", "fernet").split(",")]
ENCRYPTION_KEYS = [k for k in ENCRYPTION_KEYS if k]
KEY_PEPPER = _secret("APERTURE_KEY_PEPPER")

if PRODUCTION and not env.str("DATABASE_URL", default=""):
    raise ImproperlyConfigured("DATABASE_URL is not set. Production needs PostgreSQL.")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "tenants",
    "routing",
    "billing",
    "gateway",
]

MIDDLEWARE = [
    "aperture.middleware.RequestIdMiddleware",
    "aperture.middleware.AllowedHostMiddleware",
    "aperture.middleware.BodySizeLimitMiddleware",
    "aperture.middleware.BodyDeadlineMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # The page policies, static files, sessions, sign-in and messages are for browser pages
    # only: the inference API skips them (aperture/browser_middleware.py). CSRF and framing
    # stay as Django names them, for `check --deploy` to find.
    "aperture.middleware.SecurityHeadersMiddleware",
    "aperture.browser_middleware.StaticFiles",
    "aperture.browser_middleware.Sessions",
    "django.middleware.common.CommonMiddleware",  # every answer's Content-Length
    "django.middleware.csrf.CsrfViewMiddleware",
    "aperture.browser_middleware.Authentication",
    "aperture.browser_middleware.Messages",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out admin sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "gateway.urls"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "aperture.wsgi.application"

# --- Database -------------------------------------------------------------------------
DATABASES = {
    "default": env.db_url_config(
        env.str("DATABASE_URL", default="") or f"sqlite:///{VAR_DIR / 'aperture.sqlite3'}"
    )
}
# Commits of the web processes do not wait for the WAL flush: every request commits a hold,
# a settlement and a usage record, and a hot budget row stays locked until its commit is
# flushed. Still atomic and exact; a crash of the database server itself may lose its last
# fraction of a second of commits (README: Billing).
BILLING_ASYNC_COMMIT = env.bool("APERTURE_BILLING_ASYNC_COMMIT", default=True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A small pool per worker process; connections go back to it before any upstream call.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    if BILLING_ASYNC_COMMIT:
        DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c synchronous_commit=off"
    # The hot path's fixed statements (aperture.db.prepared_cursor) are prepared once per
    # connection after this many runs; 0 turns that off (PgBouncer before 1.21 in transaction
    # mode cannot carry prepared statements).
    prepare_after = env.int("APERTURE_DB_PREPARE_THRESHOLD", default=5)
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = prepare_after or None
    if env.bool("APERTURE_DB_POOL", default=True):
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 0,
            "max_size": env.int("APERTURE_DB_POOL_MAX_SIZE", default=8),
            "timeout": env.float("APERTURE_DB_POOL_TIMEOUT", default=10.0),
        }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    private_dir(VAR_DIR)  # 0700, and the database file 0600: it holds every tenant's data
    if DATABASES["default"]["NAME"] not in ("", ":memory:"):
        private_sqlite(Path(DATABASES["default"]["NAME"]))
    # WAL and a busy timeout let concurrent gevent requests share one SQLite file.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache, Redis, Celery -------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
_cache_prefix = "aperture"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel test workers share one Redis; keep their keys apart.
    _cache_prefix = f"aperture-test-{os.environ['PYTEST_XDIST_WORKER']}"
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "aperture.redis_cache.SharedClientRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": _cache_prefix,
            # A bounded pool: a burst of greenlets waits for a connection instead of opening
            # a thousand at once (which timed out under the 1,000-request benchmark).
            "OPTIONS": {
                "pool_class": "redis.BlockingConnectionPool",
                "parser_class": "aperture.redis_cache.ReadyCheckedParser",
                "max_connections": env.int("APERTURE_REDIS_MAX_CONNECTIONS", default=50),
                "timeout": 2,
                # A connect finishes when the process's event loop gets to it: at the start of
                # a burst of thousands that took more than 0.5 s, and each timed-out lookup
                # fell back to the database (whose pool then timed out into 503s).
                "socket_connect_timeout": 2,
                "socket_timeout": 0.5,
            },
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "KEY_PREFIX": _cache_prefix,
        }
    }

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "memory://")
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# How long a message handed to a worker may stay unacknowledged before Redis hands it out
# again (a worker that died with it; tasks are acknowledged when they end). An async job
# found running then is failed `worker_lost` only if its worker's heartbeat went silent
# (routing/jobs/run.py).
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "max_connections": env.int("CELERY_BROKER_MAX_CONNECTIONS", default=100),
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
}
CELERY_TIMEZONE = "UTC"
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="celery")

# --- Auth, i18n, static, media --------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out user and address before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("APERTURE_STATIC_ROOT", default=str(VAR_DIR / "static")))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env.str("APERTURE_MEDIA_ROOT", default=str(VAR_DIR / "media")))
if VAR_DIR in (*STATIC_ROOT.parents, *MEDIA_ROOT.parents):
    private_dir(VAR_DIR)  # not left to mkdir(parents=True), which would make it 0755
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise serves from here after collectstatic
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
if env.str("APERTURE_S3_BUCKET", default=""):
    # S3-compatible object storage for hosted images (pip install "aperture[s3]");
    # credentials come from the usual AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY variables.
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("APERTURE_S3_BUCKET"),
            "endpoint_url": env.str("APERTURE_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("APERTURE_S3_REGION", default="") or None,
            "default_acl": "private",
            "querystring_auth": False,
        },
    }

# --- Request limits -------------------------------------------------------------------
MAX_BODY_BYTES = env.int("APERTURE_MAX_BODY_BYTES", default=50 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# Each image of an edit or a reference image (the whole body is MAX_BODY_BYTES at most).
EDIT_MAX_IMAGE_BYTES = env.int("APERTURE_EDIT_MAX_IMAGE_BYTES", default=50 * 1024 * 1024)
# Pixels of an input image (edit, mask, reference), read from its header before decoding: the
# largest input any provider takes (4096x4096); a decoded RGBA image costs 4 bytes a pixel.
MAX_INPUT_PIXELS = env.int("APERTURE_MAX_INPUT_PIXELS", default=4096 * 4096)
# Image decodes and encodes one worker process runs at once; more wait their turn, so that a
# burst of large images takes turns instead of multiplying memory.
IMAGE_JOBS = env.int("APERTURE_IMAGE_JOBS", default=2)
# A request body must arrive within this many seconds, plus one more second for every
# BODY_MIN_BYTES_PER_SECOND bytes received (a large body at a fair rate); else 408.
BODY_TIMEOUT_SECONDS = env.float("APERTURE_BODY_TIMEOUT_SECONDS", default=30.0)
BODY_MIN_BYTES_PER_SECOND = env.int("APERTURE_BODY_MIN_BYTES_PER_SECOND", default=50_000)

# --- Django REST framework ------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "aperture.negotiation.QuickContentNegotiation",
    "EXCEPTION_HANDLER": "aperture.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # `?format=csv` is read by the usage views themselves; errors always answer JSON.
    "URL_FORMAT_OVERRIDE": None,
}

# --- OpenAPI schema (/api/schema/) and interactive docs (/api/docs/) --------------------
SPECTACULAR_SETTINGS = {
    "TITLE": "Aperture API",
    "DESCRIPTION": (
        "The OpenAI-compatible image routes and the management API of an Aperture gateway. "
        "Authorize with an API key (`apk_…`). Errors are OpenAI's envelope: "
        '`{"error": {"message", "type", "param", "code"}}`.'
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "COMPONENT_SPLIT_REQUEST": True,
    "PREPROCESSING_HOOKS": ["aperture.openapi.only_gateway_routes"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "aperture.openapi.error_envelope",
    ],
    # Swagger UI's files ship with the server (drf-spectacular-sidecar): no CDN needed.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": True, "displayOperationId": False},
    # One name for a choice set that several fields share (else a warning on every generation).
    "ENUM_NAME_OVERRIDES": {"DeliveryStatusEnum": "billing.models.SpendAlert.Delivery"},
}

# --- Security -------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=PRODUCTION)
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https")
    if env.bool("APERTURE_BEHIND_TLS_PROXY", default=False)
    else None
)

# Content-Security-Policy and Permissions-Policy on every HTML page (the admin, the API docs,
# an error page): scripts only from this origin. Swagger UI's init script is a file of its own
# (SpectacularSwaggerSplitView); its page and the admin still use inline styles.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
PERMISSIONS_POLICY = (
    "accelerometer=(), camera=(), display-capture=(), geolocation=(), gyroscope=(), "
    "magnetometer=(), microphone=(), midi=(), payment=(), usb=()"
)

# Admin sign-in throttling (django-axes): a username failing this often from one address is
# locked out for the cool-off, right password or not. Unlock sooner with
# `manage.py axes_reset_username <user>` (or `axes_reset`), or in the admin's Axes pages.
AXES_FAILURE_LIMIT = env.int("APERTURE_ADMIN_LOGIN_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("APERTURE_ADMIN_LOCKOUT_MINUTES", default=60))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "gateway.admin_login.lockout_response"
AXES_VERBOSE = False  # its lockouts are still logged, as warnings

# --- Email (spend alerts) ------------------------------------------------------------
# EMAIL_URL as django-environ reads it, e.g. smtp+tls://alerts@example.com@smtp.example.com:587
# (URL-encode an @ in the user name); EMAIL_HOST_PASSWORD or EMAIL_HOST_PASSWORD_FILE give the
# password outside the URL. The embedded default prints emails to the console, one line each
# (aperture/mail.py).
globals().update(
    {
        name: value
        for name, value in env.email_url_config(
            env.str("EMAIL_URL", default="consolemail://")
        ).items()
        if value is not None
    }
)
if env.str("EMAIL_HOST_PASSWORD", default="") or env.str("EMAIL_HOST_PASSWORD_FILE", default=""):
    EMAIL_HOST_PASSWORD = _secret("EMAIL_HOST_PASSWORD")
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="aperture@localhost")
# Spend alerts emailed per workspace in any 24 hours; past it an alert's email is not sent.
ALERT_EMAILS_PER_DAY = env.int("APERTURE_ALERT_EMAILS_PER_DAY", default=100)

# --- Logging: one line per event, never a secret --------------------------------------
# `text` (the default): one human-readable line per event. `json`: one JSON object per line,
# with every request's fields (routing/metered.py) and any error's traceback as keys.
LOG_FORMAT = env.str("APERTURE_LOG_FORMAT", default="text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured("APERTURE_LOG_FORMAT must be text or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "aperture.middleware.RequestIdLogFilter"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "datefmt": "%Y-%m-%dT%H:%M:%S%z",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}

# --- Metrics: /metrics for Prometheus (docs/metrics.md) -------------------------------
# false: nothing is counted and /metrics is a 404 (gunicorn.conf.py reads it too).
METRICS_ENABLED = env.bool("APERTURE_METRICS", default=True)


def _optional_secret(name: str) -> str:
    """A secret from `NAME` or the file named by `NAME_FILE`; empty if neither is set."""
    value: str = env.str(name, default="")
    file_name = env.str(f"{name}_FILE", default="")
    return value or (Path(file_name).read_text().strip() if file_name else "")


# Set: scrapes must present it as a bearer token. Unset: only loopback callers that came
# through no proxy may scrape (behind a reverse proxy, set it).
METRICS_TOKEN = _optional_secret("APERTURE_METRICS_TOKEN")
# The Celery queues whose depth /metrics reports (LLEN on the Redis broker).
METRICS_CELERY_QUEUES = env.list("APERTURE_METRICS_CELERY_QUEUES", default=["celery"])

# --- Upstreams and hosted images ------------------------------------------------------
# As many kept-alive connections per upstream host as a worker serves requests at once.
UPSTREAM_POOL_SIZE = env.int(
    "APERTURE_UPSTREAM_POOL_SIZE", default=env.int("APERTURE_WORKER_CONNECTIONS", default=4000)
)
# Connecting to an upstream: a dead host should cost little (each deployment may set its own).
UPSTREAM_CONNECT_TIMEOUT = env.float("APERTURE_UPSTREAM_CONNECT_TIMEOUT", default=3.0)
# The most of an upstream's answer read whole (decoded), streams aside: an upstream (a
# workspace's own, say) cannot make a worker hold what it likes, a compressed bomb included.
UPSTREAM_MAX_ANSWER_BYTES = env.int("APERTURE_UPSTREAM_MAX_ANSWER_BYTES", default=256 * 1024 * 1024)
# Deployment health (routing/health.py): failures within the window that open a circuit, and
# its cooldown, doubled on each trip up to the cap.
HEALTH_WINDOW_SECONDS = env.float("APERTURE_HEALTH_WINDOW_SECONDS", default=60.0)
HEALTH_FAILURE_THRESHOLD = env.int("APERTURE_HEALTH_FAILURE_THRESHOLD", default=3)
HEALTH_COOLDOWN_SECONDS = env.float("APERTURE_HEALTH_COOLDOWN_SECONDS", default=10.0)
HEALTH_COOLDOWN_MAX_SECONDS = env.float("APERTURE_HEALTH_COOLDOWN_MAX_SECONDS", default=300.0)
# How long a process reuses what it read of a deployment's health (its own changes apply at
# once; other processes' within this).
HEALTH_CACHE_SECONDS = env.float("APERTURE_HEALTH_CACHE_SECONDS", default=1.0)
# How often the Celery beat probes deployments whose circuit is open.
HEALTH_PROBE_INTERVAL_SECONDS = env.float("APERTURE_HEALTH_PROBE_INTERVAL_SECONDS", default=30.0)
# Guardrails (routing/guardrails): how long a prompt's moderation scores are reused, by hash.
GUARDRAIL_MODERATION_CACHE_SECONDS = env.int(
    "APERTURE_GUARDRAIL_MODERATION_CACHE_SECONDS", default=300
)
IMAGE_URL_TTL_SECONDS = env.int("APERTURE_IMAGE_URL_TTL_SECONDS", default=3600)
# Downloads of upstream-hosted images (when a tenant asks for b64_json).
FETCH_TIMEOUT_SECONDS = env.float("APERTURE_FETCH_TIMEOUT_SECONDS", default=30.0)
FETCH_MAX_BYTES = env.int("APERTURE_FETCH_MAX_BYTES", default=50 * 1024 * 1024)
FETCH_ALLOWED_HOSTS = env.list("APERTURE_FETCH_ALLOWED_HOSTS", default=[])
# Asynchronous upstreams (Black Forest Labs, Replicate): the first wait between polls; it
# grows by half each time, up to 1.5 s, within the deployment's timeout.
UPSTREAM_POLL_INTERVAL_SECONDS = env.float("APERTURE_UPSTREAM_POLL_INTERVAL_SECONDS", default=0.5)
# Passthrough: the longest wait for the upstream's next bytes (not the whole call). Every
# relayed image answer (passthrough, /v1 streams): how much of it is kept to count its
# images (above: charged at the estimate).
PASSTHROUGH_READ_TIMEOUT = env.float("APERTURE_PASSTHROUGH_READ_TIMEOUT", default=300.0)
PASSTHROUGH_METER_MAX_BYTES = env.int(
    "APERTURE_PASSTHROUGH_METER_MAX_BYTES", default=64 * 1024 * 1024
)

# --- Billing --------------------------------------------------------------------------
RATE_LIMIT_REDIS_URL = env.str("APERTURE_RATE_LIMIT_REDIS_URL", default=REDIS_URL)
REDIS_MAX_CONNECTIONS = env.int("APERTURE_REDIS_MAX_CONNECTIONS", default=50)
CACHE_KEY_PREFIX = _cache_prefix
# Holds older than this are orphans of crashed workers (above the longest upstream timeout).
RESERVATION_TTL_SECONDS = env.int("APERTURE_RESERVATION_TTL_SECONDS", default=960)
# Budget slices (billing/leases.py, docs/budget-slices.md): each process leases at most
# 1/SHARE of a budget's remaining room, only while that covers MIN_REQUESTS requests like the
# one at hand, and admits from it locally. A slice is renewed while its process lives and
# returns LEASE_SECONDS after it stops; an idle one returns after IDLE_SECONDS. A request a
# budget would refuse while slices of it are out waits up to RECLAIM_WAIT_SECONDS for them.
BUDGET_LEASES = env.bool("APERTURE_BUDGET_LEASES", default=True)
BUDGET_LEASE_SHARE = env.int("APERTURE_BUDGET_LEASE_SHARE", default=16)
BUDGET_LEASE_MIN_REQUESTS = env.int("APERTURE_BUDGET_LEASE_MIN_REQUESTS", default=4)
BUDGET_LEASE_SECONDS = env.float("APERTURE_BUDGET_LEASE_SECONDS", default=30.0)
BUDGET_LEASE_IDLE_SECONDS = env.float("APERTURE_BUDGET_LEASE_IDLE_SECONDS", default=1.0)
BUDGET_RECLAIM_WAIT_SECONDS = env.float("APERTURE_BUDGET_RECLAIM_WAIT_SECONDS", default=2.0)
CELERY_BEAT_SCHEDULE = {
    "reap-orphaned-reservations": {
        "task": "billing.tasks.reap_reservations",
        "schedule": 60.0,
    },
    "daily-usage-rollup": {
        "task": "billing.tasks.rollup_daily_usage",
        "schedule": 900.0,
    },
    # The dashboard's source: this hour and the previous one, every 5 minutes.
    "hourly-usage-rollup": {
        "task": "billing.tasks.rollup_hourly_usage",
        "schedule": 300.0,
        "options": {"expires": 300.0},
    },
    # The dashboard's month, summed per day ahead of the operators' page loads.
    "warm-dashboard": {
        "task": "gateway.tasks.warm_dashboard",
        "schedule": 300.0,
        "options": {"expires": 300.0},
    },
    # Deployments whose circuit is open: their credential's free check call, closed if it
    # answers (routing/probes.py). A run not started within the interval is dropped.
    "probe-open-deployments": {
        "task": "routing.tasks.probe_open_deployments",
        "schedule": HEALTH_PROBE_INTERVAL_SECONDS,
        "options": {"expires": HEALTH_PROBE_INTERVAL_SECONDS},
    },
    # Async image jobs (routing/jobs): jobs lost with their worker or never started fail,
    # and their holds are released.
    "sweep-image-jobs": {
        "task": "routing.tasks.sweep_image_jobs",
        "schedule": env.float("APERTURE_JOB_SWEEP_SECONDS", default=30.0),
        "options": {"expires": env.float("APERTURE_JOB_SWEEP_SECONDS", default=30.0)},
    },
    # Retention: expired jobs, their results and inputs, idempotency records and hosted
    # images are deleted, files and rows (routing/jobs/retention.py).
    "delete-expired": {
        "task": "routing.tasks.delete_expired",
        "schedule": 300.0,
        "options": {"expires": 300.0},
    },
}

# --- Capacity ---------------------------------------------------------------------------
# Requests one web worker process serves at once; past it, new ones get 503 `overloaded`
# with Retry-After (aperture/load_shedding.py). gunicorn's gevent workers accept up to
# APERTURE_WORKER_CONNECTIONS (gunicorn.conf.py); the rest is left for health checks.
MAX_IN_FLIGHT = env.int(
    "APERTURE_MAX_IN_FLIGHT",
    default=int(env.int("APERTURE_WORKER_CONNECTIONS", default=4000) * 0.95),
)
# Of those, how many are at work at once (the CPU, the database, Redis) between their waits
# on the network; the rest wait their turn, past WORK_WAIT_SECONDS a 503 `overloaded`.
# 0 lets every request work at once (aperture/load_shedding.py).
WORK_SLOTS = env.int("APERTURE_WORK_SLOTS", default=16)
WORK_WAIT_SECONDS = env.float("APERTURE_WORK_WAIT_SECONDS", default=30.0)
# A web process's garbage collector, once the app is loaded: what is loaded is frozen, and
# the three generations collect at these thresholds (Python's own: 700,10,10).
GC_THRESHOLD = tuple(env.list("APERTURE_GC_THRESHOLD", cast=int, default=[10_000, 10, 10]))
# A web process that had this many requests in flight at once collects all its garbage once
# none is (aperture/garbage_collection.py); 0: never.
GC_AFTER_IN_FLIGHT = env.int("APERTURE_GC_AFTER_IN_FLIGHT", default=100)

# --- Async image jobs, idempotency and retention ----------------------------------------
# A job's result (and the job) is kept this long after it was submitted.
JOB_RESULT_TTL_SECONDS = env.int("APERTURE_JOB_RESULT_TTL_SECONDS", default=24 * 3600)
# A job must start this long after it was submitted, or it fails `job_expired` (its hold
# lasts until then, and a minute more).
JOB_MAX_SECONDS = env.int("APERTURE_JOB_MAX_SECONDS", default=3000)
if JOB_RESULT_TTL_SECONDS < JOB_MAX_SECONDS:
    raise ImproperlyConfigured(
        "APERTURE_JOB_RESULT_TTL_SECONDS must not be below APERTURE_JOB_MAX_SECONDS: a job "
        "would be deleted before it could run."
    )
# A running job's worker says it is alive this often (and keeps the job's hold); a running
# job not heard of for JOB_LOST_AFTER_SECONDS ended with its worker: it fails `worker_lost`.
JOB_HEARTBEAT_SECONDS = env.float("APERTURE_JOB_HEARTBEAT_SECONDS", default=10.0)
JOB_LOST_AFTER_SECONDS = env.float("APERTURE_JOB_LOST_AFTER_SECONDS", default=60.0)
# Without a broker (the embedded default), jobs run in the web process, in the background,
# this many at a time.
JOBS_IN_PROCESS = CELERY_TASK_ALWAYS_EAGER
JOB_IN_PROCESS_WORKERS = env.int("APERTURE_JOB_IN_PROCESS_WORKERS", default=4)
# Webhook deliveries of finished jobs are retried with exponential backoff for this long.
JOB_WEBHOOK_RETRY_SECONDS = env.int("APERTURE_JOB_WEBHOOK_RETRY_SECONDS", default=24 * 3600)
# The first retry's delay; each one after doubles it (up to 30 minutes).
JOB_WEBHOOK_FIRST_RETRY_SECONDS = env.float(
    "APERTURE_JOB_WEBHOOK_FIRST_RETRY_SECONDS", default=30.0
)
# An Idempotency-Key and the answer it replays are kept this long.
IDEMPOTENCY_TTL_SECONDS = env.int("APERTURE_IDEMPOTENCY_TTL_SECONDS", default=24 * 3600)
