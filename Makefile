# Sluice: the two commands are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)

.PHONY: help run test lint typecheck pytest venv system-deps system-deps-test lock clean fmt \
	compose-smoke loadtest new-service sync

help:
	@echo "make run            the whole stack as local processes, nginx on http://127.0.0.1:8080"
	@echo "make test           venv, pinned deps, system packages, ruff, mypy --strict, pytest"
	@echo "make lint           ruff: lint and format check"
	@echo "make fmt            ruff: fix and format what make lint checks"
	@echo "make typecheck      mypy --strict over services/, dev/ and tests/"
	@echo "make pytest         the test suite only (PYTEST_ARGS=... to pick)"
	@echo "make new-service NAME=price-feed   a new service: package, test, compose/k8s/nginx entries"
	@echo "make sync           rewrite what comes from the services' declarations (nginx, Prometheus)"
	@echo "make loadtest       a bounded locust run against make run's stack"
	@echo "make compose-smoke  build the image, docker compose up, deploy/smoke.sh, down"
	@echo "make lock           re-pin requirements.lock from pyproject.toml"
	@echo "make venv           the virtualenv with the pinned dependencies"
	@echo "make system-deps    nginx (make run's); system-deps-test: what make test needs"
	@echo "make clean          remove the venv, .run/ and the tools' caches"
	@echo "make help           this list (what make with no target shows)"

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# Install what is missing when we may (root); otherwise say what to install.
# Each entry is command:debian-package.
RUN_DEPS := nginx:nginx-light
COMPOSE_DEPS := docker-compose:docker-compose openssl:openssl
TEST_DEPS := $(RUN_DEPS) $(COMPOSE_DEPS) redis-server:redis-server chromium:chromium \
	kubectl:kubectl promtool:prometheus ss:iproute2 firefox-esr:firefox-esr
define install_missing
	@missing=""; \
	for entry in $(1); do \
	  bin=$${entry%%:*}; pkg=$${entry##*:}; \
	  command -v $$bin >/dev/null || [ -x /usr/sbin/$$bin ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "apt-get install:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing system packages:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi
endef

system-deps:
	$(call install_missing,$(RUN_DEPS))

system-deps-test:
	$(call install_missing,$(TEST_DEPS))

# Checks every setting first; honcho reads no env file (.env is compose's); says when every
# service is ready (dev/sluice_dev/stack.py).
run: venv system-deps
	@exec $(BIN)/python -m sluice_dev run

# A new service of your own on the core, with its place in compose, k8s, nginx, Prometheus.
new-service: venv
	@test -n "$(NAME)" || { echo "usage: make new-service NAME=price-feed"; exit 2; }
	$(BIN)/python -m sluice_dev new-service $(NAME)

sync: venv
	$(BIN)/python -m sluice_dev sync

PY_DIRS := services dev tests benchmarks deploy loadtests

lint: venv
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: venv
	$(BIN)/mypy --strict services/ dev/ tests/

pytest: venv system-deps-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

fmt: venv
	$(BIN)/ruff check --fix $(PY_DIRS)
	$(BIN)/ruff format $(PY_DIRS)

# requirements.lock: everything make run/test install; requirements-runtime.lock: the image's.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip freeze --exclude-editable | grep -v '^sluice' > requirements.lock
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install -q .
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^sluice' > requirements-runtime.lock
	rm -rf .lock-venv
	@# pip freeze sees one interpreter: a dependency only older Pythons need (async-timeout below
	@# 3.11.3, as Debian's 3.11.2 in the image) is lost. This says which marker line to add back.
	$(BIN)/python -m pytest -q tests/deploy/test_lock_markers.py

# A bounded, headless locust run against the running stack (make run in another terminal):
# CSV and HTML in loadtests/reports/; exits non-zero when a threshold is missed.
LOADTEST_HOST ?= http://127.0.0.1:8080
LOADTEST_USERS ?= 40
LOADTEST_TIME ?= 60s
loadtest: venv
	@mkdir -p loadtests/reports
	LOADTEST_RESTARTS=$${LOADTEST_RESTARTS:-2} $(BIN)/locust -f loadtests/locustfile.py --headless \
	  --host $(LOADTEST_HOST) -u $(LOADTEST_USERS) -r 10 -t $(LOADTEST_TIME) --stop-timeout 15 \
	  --csv loadtests/reports/sluice --html loadtests/reports/sluice.html

# Without a .env, one with a generated key (compose refuses to start with no key). Then build,
# up on free 127.0.0.1 ports, every container healthy, deploy/smoke.sh and every README example,
# down (README: docker compose): Docker where it answers, else podman with local stand-in images
# (installed by the harness, as root); docker-compose and openssl installed here when missing.
compose-smoke: venv
	$(call install_missing,$(COMPOSE_DEPS))
	@test -f .env || sed "s/^SLUICE_API_KEYS=$$/SLUICE_API_KEYS=sk-$$(openssl rand -hex 24)/" \
	  .env.example > .env
	$(BIN)/python -m deploy.containers smoke --project-dir .

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache
