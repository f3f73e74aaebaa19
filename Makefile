# EasyTask developer entry points.  `make test` works on a fresh Debian machine (run as root).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-pg check bench sysdeps clean vendor-uplot bench-pgout bench-faults bench-scale

UPLOT_VERSION ?= 1.6.32

# `make test` runs the whole suite on SQLite and, side by side, every server-level test file again
# with each server on its own PostgreSQL database (EASYTASK_TEST_DB=postgres; scripts/test-both.sh).
# Tests marked `sqlite` handle the SQLite file itself; tests/test_multiserver.py starts its servers
# on PostgreSQL itself; the browser tests drive the same console (tests/test_console.py covers it
# on both; the admin and schedules pages' browser tests run on both too). The PostgreSQL lane,
# being shorter, then runs the slowest SQLite files (the bench smoke runs, a two-server console test).
# `make test-pg` runs the PostgreSQL pass alone. See docs/operations.md.
PG_TESTS := tests/test_store.py tests/test_migrations.py tests/test_adhoc.py \
	tests/test_attacks.py tests/test_audit.py tests/test_retention.py tests/test_secrets.py \
	tests/test_secret_sweep.py tests/test_inventory_server.py tests/test_bootstrap.py \
	tests/test_security.py tests/test_reliability.py tests/test_agents.py tests/test_auth.py \
	tests/test_console.py tests/test_console_playbooks.py tests/test_export.py \
	tests/test_fileops.py tests/test_notify.py tests/test_ops.py tests/test_play.py \
	tests/test_schedules.py tests/test_stored_schedules.py tests/test_api_runs.py tests/test_policy.py tests/test_login_limit.py \
	tests/test_request_hygiene.py tests/test_passwords.py tests/test_scope_actions.py \
	tests/test_credentials.py tests/test_ansible_connection.py tests/test_grouped_output.py tests/test_grouped_view.py \
	tests/test_console_audit.py tests/test_agent_env.py tests/test_agent_names.py \
	tests/test_agent_requests.py tests/test_light_agent.py tests/test_agent_labels.py tests/test_become.py \
	tests/test_agent_link_messages.py \
	tests/test_play_outcome.py tests/test_console_admin.py tests/test_agent_handshakes.py \
	tests/test_bad_input.py tests/test_timeline.py tests/test_host_metrics.py \
	tests/test_busy_agents.py tests/test_scoped_reading.py tests/test_api_jobs.py \
	tests/test_log_partitions.py tests/test_db_search.py tests/test_play_loops.py \
	tests/test_templates.py tests/test_db_faults.py \
	tests/test_play_loop_results.py tests/test_approval_rules.py \
	tests/test_agent_backoff.py \
	tests/browser/test_console_admin.py tests/browser/test_console_schedules.py

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,test]'
	touch $(STAMP)

sysdeps:
	@bash scripts/sysdeps.sh

demo: $(STAMP)
	$(VENV)/bin/easytask demo

test: sysdeps $(STAMP)
	PY=$(PY) bash scripts/test-both.sh $(PG_TESTS)

test-pg: sysdeps $(STAMP)
	EASYTASK_TEST_DB=postgres $(PY) -m pytest -q -m 'not sqlite' $(PG_TESTS)

check: $(STAMP)
	$(VENV)/bin/ruff format --check easytask tests bench
	$(VENV)/bin/ruff check easytask tests bench
	$(VENV)/bin/mypy easytask

# Refresh web/static/vendor/uplot (the console's charts) from the npm registry, hash-checked.
vendor-uplot:
	bash scripts/vendor-uplot.sh $(UPLOT_VERSION)

bench: $(STAMP)
	$(PY) -m bench.all

# output on PostgreSQL and SQLite side by side, with a 10,000,000-line history (not in `make test`)
bench-pgout: $(STAMP)
	$(PY) -m bench.pgout --write

# PostgreSQL down for 60 s while 100 agents stream output (not part of `make test`).
bench-faults: $(STAMP)
	$(PY) -m bench.dbfaults --agents 100 --pause 60

# 10,000 simulated agents on one server: online, fan-out to all, idle CPU, RSS (not in `make test`);
# a reconnect storm of 5,000 after kill -9 (one server, then the hand-off between two); three
# servers on one PostgreSQL with 3,000 agents. One big run at a time on a shared machine.
bench-scale: $(STAMP)
	$(PY) -m bench.scale --write
	$(PY) -m bench.storm --agents 5000 --write
	$(PY) -m bench.servers --agents 3000 --write

clean:
	rm -rf $(VENV) .easytask build dist
