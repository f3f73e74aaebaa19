# EasyTask developer entry points.  `make test` works on a fresh Debian machine (run as root).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-pg check bench sysdeps clean

# Tests run a second time with every server on its own PostgreSQL database (EASYTASK_TEST_DB).
# `make test` runs a subset that calls every Store method (tests/test_store.py) and the server
# paths that differ by backend: migrations, several servers, search input, audit chain, retention,
# secrets, tokens, restarts and re-attach, large output. `make test-pg` runs every server-level
# test file. Tests marked `sqlite` handle the SQLite file itself; tests/test_multiserver.py starts
# its servers on PostgreSQL itself and runs in the first pass. See docs/operations.md.
PG_TESTS := tests/test_store.py tests/test_migrations.py \
	tests/test_adhoc.py tests/test_attacks.py tests/test_audit.py tests/test_retention.py \
	tests/test_secrets.py tests/test_security.py tests/test_reliability.py
PG_TESTS_ALL := $(PG_TESTS) tests/test_agents.py tests/test_auth.py tests/test_console.py \
	tests/test_console_playbooks.py tests/test_export.py tests/test_fileops.py \
	tests/test_notify.py tests/test_ops.py tests/test_play.py tests/test_schedules.py

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

sysdeps:
	@bash scripts/sysdeps.sh

demo: $(STAMP)
	$(VENV)/bin/easytask demo

test: sysdeps $(STAMP)
	$(PY) -m pytest -q
	EASYTASK_TEST_DB=postgres $(PY) -m pytest -q -m 'not sqlite' $(PG_TESTS)

test-pg: sysdeps $(STAMP)
	EASYTASK_TEST_DB=postgres $(PY) -m pytest -q -m 'not sqlite' $(PG_TESTS_ALL)

check: $(STAMP)
	$(VENV)/bin/ruff format --check easytask tests bench
	$(VENV)/bin/ruff check easytask tests bench
	$(VENV)/bin/mypy easytask

bench: $(STAMP)
	$(PY) bench/all.py

clean:
	rm -rf $(VENV) .easytask build dist
