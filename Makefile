# The README's two commands: `make run` (embedded default) and `make test` (whole suite).
# Each sets itself up idempotently: virtual environment in .venv, install, migrate.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/aperture
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: install run test serve lint bench migrate browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Embedded default: SQLite and secrets under var/, in-process cache, eager Celery, local provider.
run: install
	env -u DATABASE_URL -u REDIS_URL -u CELERY_BROKER_URL -u APERTURE_PRODUCTION sh -c '\
		$(PY) manage.py migrate --noinput -v0 && \
		$(PY) manage.py collectstatic --noinput -v0 && \
		$(PY) manage.py seed_demo --port $(PORT) && \
		PORT=$(PORT) WEB_CONCURRENCY=1 exec $(VENV)/bin/gunicorn -c gunicorn.conf.py aperture.wsgi'

# Debian's Chromium and ChromeDriver, for the browser checks of /admin/ and /api/docs/.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null; }

# The whole suite, against PostgreSQL and Redis on 127.0.0.1 (DATABASE_URL / REDIS_URL override).
test: install browser
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(VENV)/bin/pytest -n $${PYTEST_WORKERS:-auto} -p no:cacheprovider

# Production: secrets, DATABASE_URL and REDIS_URL from the environment; web + Celery worker + beat.
serve: install
	APERTURE_PRODUCTION=true $(PY) manage.py check --deploy --fail-level ERROR
	APERTURE_PRODUCTION=true $(PY) manage.py migrate --noinput
	APERTURE_PRODUCTION=true $(PY) manage.py collectstatic --noinput -v0
	APERTURE_PRODUCTION=true sh -c '\
		$(VENV)/bin/celery -A aperture worker --pool gevent --concurrency 100 --loglevel INFO & \
		$(VENV)/bin/celery -A aperture beat --loglevel INFO --schedule $${APERTURE_VAR_DIR:-var}/celerybeat-schedule & \
		APERTURE_BIND=$${APERTURE_BIND:-0.0.0.0:$(PORT)} exec $(VENV)/bin/gunicorn -c gunicorn.conf.py aperture.wsgi'

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

# LiteLLM's proxy, the throughput section's comparator, in an environment of its own.
LITELLM_VENV := .venv-litellm

# Without it (no registry, say) the benchmark runs all the same and leaves the row out.
$(LITELLM_VENV)/.installed: bench/litellm-requirements.txt
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r bench/litellm-requirements.txt && touch $@ || echo "LiteLLM not installed"

bench: install $(LITELLM_VENV)/.installed
	$(PY) -m bench
