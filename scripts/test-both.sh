#!/usr/bin/env bash
# `make test`: the whole suite on SQLite and, at the same time, every server-level test file again
# with each server on its own PostgreSQL database. Both lanes run side by side (the tests mostly
# wait on real servers and agents); each writes its own log, shown when it ends.
# The second lane is shorter, so after its PostgreSQL pass it also takes the SQLite pass's
# slowest files (LATE: the bench smoke runs and the two-server console test, which start their
# own PostgreSQL); the first lane skips them. Each pass writes a JUnit report
# beside its log with every test's time, so the lanes can be balanced again as the suite grows.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LATE=(tests/test_bench_smoke.py tests/browser/test_console_schedules_two_servers.py)
logs=$(mktemp -d)
ignore=()
for f in "${LATE[@]}"; do ignore+=(--ignore "$f"); done
# each pass its own temp root: pytest's numbered temp dirs keep only the newest three, so a
# session starting beside another may otherwise delete the directories it is using
"$PY" -m pytest -q -p no:cacheprovider --durations=15 --basetemp "$logs/tmp-sqlite" \
    --junitxml "$logs/sqlite.xml" "${ignore[@]}" >"$logs/sqlite.log" 2>&1 &
sqlite_pid=$!
(
    EASYTASK_TEST_DB=postgres "$PY" -m pytest -q -p no:cacheprovider --durations=15 \
        --basetemp "$logs/tmp-pg" --junitxml "$logs/postgres.xml" -m 'not sqlite' "$@" \
        >"$logs/postgres.log" 2>&1
    pg_rc=$?
    "$PY" -m pytest -q -p no:cacheprovider --durations=15 --basetemp "$logs/tmp-late" \
        --junitxml "$logs/late.xml" "${LATE[@]}" >"$logs/late.log" 2>&1
    late_rc=$?
    exit $((pg_rc != 0 || late_rc != 0))
) &
second_pid=$!
wait "$sqlite_pid"; sqlite_rc=$?
echo "== SQLite: the whole suite but ${LATE[*]} (exit $sqlite_rc)"
tail -n 40 "$logs/sqlite.log"
wait "$second_pid"; second_rc=$?
echo "== PostgreSQL: every server-level test file"
tail -n 40 "$logs/postgres.log"
echo "== SQLite: ${LATE[*]}"
tail -n 40 "$logs/late.log"
if [ "$sqlite_rc" -ne 0 ] || [ "$second_rc" -ne 0 ]; then
    echo "full logs: $logs"
    exit 1
fi
rm -rf "$logs"
