# The whole set-up on a fresh machine is two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
PY := $(BIN)/python
export PATH := $(BIN):$(PATH)
# honcho hands each process type PORT, PORT+100, ...: web comes first, so it gets this one.
PORT ?= 8000
export PORT

.PHONY: install run migrate check test bench demo front user admin clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

migrate: install
	@mkdir -p var
	$(PY) manage.py migrate --noinput

# Starts web, worker and scheduler (the Procfile) with an embedded Redis unless REDIS_URL is set.
run: migrate
	$(PY) -m project.embedded_redis honcho start web worker scheduler

# `make run` plus a simulated fleet of 50 machines reporting through the HTTP API.
demo: migrate
	@{ grep -E '^(web|worker|scheduler):' Procfile; \
	   echo 'simulator: sleep 3 && python manage.py simulate_fleet --machines 50 --url http://127.0.0.1:$(PORT)'; } > var/Procfile.demo
	$(PY) -m project.embedded_redis honcho -f var/Procfile.demo -d . start

# The whole suite on SQLite, then the tests that exercise the database again on PostgreSQL when
# one answers (tests/pg.py; .ci/run makes sure one does): connection handling, the chat worker
# (offsets under row locks, idempotent resends), reports and the status feed (bulk upserts),
# sessions, and the chat and status paths over the real processes. The other tests reach the
# database only through these same paths; running them all twice would add 6 minutes to a 6-minute suite.
# Two test files at a time (pytest-xdist; a file's tests stay together, sharing their stack):
# most of a test is spent waiting on real processes, and the suite takes half as long.
# TEST_WORKERS=0 runs one test at a time.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
PG_TESTS ?= tests/test_database.py tests/test_workers.py tests/test_status_worker.py tests/test_socket_auth.py \
	tests/test_chat_integration.py tests/test_status_integration.py
# Lint, formatting and types ([tool.ruff] and [tool.mypy] in pyproject.toml): seconds, so first.
# `ruff format .` fixes the formatting; `ruff check --fix .` what it can of the rest.
check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install check
	$(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)
	@if $(PY) -m tests.pg; then \
	  echo "--- again on PostgreSQL: $(PG_TESTS)"; \
	  TEST_DATABASE=postgres $(PY) -m pytest $(PYTEST_PARALLEL) $(PG_TESTS) $(PYTEST_ARGS); \
	else echo "--- the PostgreSQL pass is skipped: no server answered (.ci/run starts one)"; fi

# The standard benchmark set (bench/run.py), appended to bench/results/; BENCH_QUICK=1 for a short pass.
bench: install
	$(PY) bench/run.py standard $(if $(BENCH_QUICK),--quick)

# nginx (Debian's package) in front of `make run`'s web process, as in production
# (deploy/nginx/, docs/operations.md "The front proxy"): http://127.0.0.1:$(FRONT_PORT).
FRONT_PORT ?= 8080
front:
	@mkdir -p var/front
	LISTEN=127.0.0.1:$(FRONT_PORT) UPSTREAM=127.0.0.1:$(PORT) CONN_PER_ADDRESS=100 WORKER_CONNECTIONS=1024 \
	  envsubst '$${LISTEN} $${UPSTREAM} $${CONN_PER_ADDRESS} $${WORKER_CONNECTIONS}' \
	  < deploy/nginx/fleetchat.conf.template > var/front/front.conf
	$$(command -v nginx || echo /usr/sbin/nginx) -p $(CURDIR)/var/front/ -c $(CURDIR)/var/front/front.conf -g 'daemon off;'

# An ordinary user: dashboard and chat, no /admin/ (docs/operations.md "Users").
user: migrate
	$(PY) manage.py createoperator

# An admin, who can also read every room in /admin/: a separate, deliberate step.
admin: migrate
	$(PY) manage.py createsuperuser

clean:
	rm -rf $(VENV) var .pytest_cache staticfiles
