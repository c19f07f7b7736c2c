# One local virtualenv (.venv) for running and testing the product.
# `make run` sets up and serves on http://127.0.0.1:8000; `make test` sets up
# and runs the checks and the whole test suite.

VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# runserver takes an IPv6 address only in brackets ([::1]:8000); accept both.
BARE_HOST := $(patsubst [%],%,$(HOST))
SERVE_HOST := $(if $(findstring :,$(BARE_HOST)),[$(BARE_HOST)],$(BARE_HOST))

# `make run` stops early, with a hint, when runserver could not listen. The
# probe binds as runserver does: IPv6 only for an IPv6 address, and with
# SO_REUSEADDR, so that connections of an earlier run still in TIME_WAIT on
# the port (about a minute after a browser was connected) do not count.
define PORT_CHECK
import errno, os, socket, sys
host, port = os.environ["HOST"], int(os.environ["PORT"])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
shown = f"[{host}]" if family == socket.AF_INET6 else host
try:
    address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4]
except socket.gaierror as exc:
    sys.exit(f"{shown}: {exc.strerror}")
def bind(port):
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address[0], port, *address[2:]))
try:
    bind(port)
except OSError as exc:
    if exc.errno != errno.EADDRINUSE:
        sys.exit(f"Cannot listen on {shown}:{port}: {exc.strerror}")
    for other in range(port + 1, min(port + 50, 65536)):
        try:
            bind(other)
        except OSError:
            continue
        sys.exit(f"{shown}:{port} is taken; try make run PORT={other}")
    sys.exit(f"{shown}:{port} is taken")
endef
export PORT_CHECK

# Django 6.1 needs Python 3.12 or newer; take the first such interpreter.
PYTHON := $(shell for p in python3.13 python3.12 python3.14 python3; do \
	if command -v $$p >/dev/null 2>&1 && \
	   $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	   echo $$p; break; fi; done)

.PHONY: install run serve worker test lint pytest djangotest browsers clean bench bench-full bench-scale

$(BIN)/.installed: requirements.txt requirements-dev.txt
	@test -n "$(PYTHON)" || { echo "Python 3.12 or newer is required (Django 6.1); none was found on PATH." >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

# The server and the task worker (the report job) together; Ctrl-C stops both.
run: install
	@HOST='$(BARE_HOST)' PORT='$(PORT)' $(BIN)/python -c "$$PORT_CHECK"
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py db_worker --no-reload & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT INT TERM; \
	$(BIN)/python manage.py runserver $(SERVE_HOST):$(PORT)

# Production-style serving: Daphne with a listen backlog for reconnect bursts.
serve: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/daphne -e 'tcp:port=$(PORT):interface=$(subst :,\:,$(BARE_HOST)):backlog=2048' \
		notifysite.asgi:application

# The task worker alone, beside a server started on its own.
worker: install
	$(BIN)/python manage.py db_worker

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py check --fail-level WARNING
	$(BIN)/python manage.py makemigrations --check --dry-run

# The suite's servers and senders log at WARNING: INFO lines of a few thousand
# notifications would bury the test report.
pytest: install
	NOTIFICATIONS_LOG_LEVEL=$${NOTIFICATIONS_LOG_LEVEL:-WARNING} $(BIN)/pytest

djangotest: install
	NOTIFICATIONS_LOG_LEVEL=$${NOTIFICATIONS_LOG_LEVEL:-WARNING} $(BIN)/python manage.py test tests

test: lint pytest

# Load benchmark, product beside bare django-eventstream (README, "Performance").
# Quick: N = 1,000 in under two minutes; a smoke in CI, never failing on a figure.
bench: install
	$(BIN)/python -m bench.run --n 1000 --cross-count 1000 --out bench/results/quick.json

# Full: N = 1,000, 3,000 and 10,000 (about six minutes); not for CI.
bench-full: install
	$(BIN)/python -m bench.run --n 1000 --n 3000 --n 10000 --out bench/results/full.json

# Scale-out: two product processes behind an nginx child process (Debian's
# `nginx` package), 3,000 pages each, after one process alone at 3,000 for
# comparison (a minute or two); not for CI. README, "Scaling out".
bench-scale: install
	$(BIN)/python -m bench.run --scale-out --processes 2 --n-per-process 3000 --baseline --out bench/results/scale.json

clean:
	rm -rf $(VENV) artifacts
