# The whole set-up on a fresh machine is two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
PY := $(BIN)/python
export PATH := $(BIN):$(PATH)

.PHONY: install run migrate test bench demo user clean

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

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

user: migrate
	$(PY) manage.py createsuperuser

clean:
	rm -rf $(VENV) var .pytest_cache staticfiles
