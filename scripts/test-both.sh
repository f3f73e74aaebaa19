#!/usr/bin/env bash
# `make test`: the whole suite on SQLite and, at the same time, every server-level test file again
# with each server on its own PostgreSQL database. Both passes run side by side (the tests mostly
# wait on real servers and agents); each writes its own log, shown when it ends.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
logs=$(mktemp -d)
# each pass its own temp root: pytest's numbered temp dirs keep only the newest three, so a
# session starting beside another may otherwise delete the directories it is using
"$PY" -m pytest -q -p no:cacheprovider --durations=15 --basetemp "$logs/tmp-sqlite" >"$logs/sqlite.log" 2>&1 &
sqlite_pid=$!
EASYTASK_TEST_DB=postgres "$PY" -m pytest -q -p no:cacheprovider --durations=15 --basetemp "$logs/tmp-pg" \
    -m 'not sqlite' "$@" >"$logs/postgres.log" 2>&1 &
pg_pid=$!
wait "$sqlite_pid"; sqlite_rc=$?
echo "== SQLite: the whole suite (exit $sqlite_rc)"
tail -n 40 "$logs/sqlite.log"
wait "$pg_pid"; pg_rc=$?
echo "== PostgreSQL: every server-level test file (exit $pg_rc)"
tail -n 40 "$logs/postgres.log"
if [ "$sqlite_rc" -ne 0 ] || [ "$pg_rc" -ne 0 ]; then
    echo "full logs: $logs"
    exit 1
fi
rm -rf "$logs"
