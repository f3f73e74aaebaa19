"""Every benchmark in sequence, each writing its own report (what `make bench` runs).

    .venv/bin/python -m bench.all [--only fanout,console,roundtrip,ingest,footprint,cluster,grouping] [--quick]
        [--dry-run]

Each benchmark runs with its defaults and `--write`: fanout, roundtrip, ingest, footprint,
cluster and grouping rewrite their sections of docs/benchmarks.md, console rewrites bench/results/console.md.
`--quick` runs each with `--quick` and writes nothing.  A benchmark that fails does not stop the
others; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence

from tests.support import REPO

ORDER = ["fanout", "console", "roundtrip", "ingest", "footprint", "cluster", "grouping"]


def commands(only: Sequence[str], quick: bool) -> list[list[str]]:
    out = []
    for name in ORDER:
        if name not in only:
            continue
        args = [sys.executable, "-m", f"bench.{name}"]
        if quick:
            args.append("--quick")
        elif name != "console":  # console writes bench/results/console.md by default
            args.append("--write")
        out.append(args)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--only", default=",".join(ORDER), help="which benchmarks (comma separated)")
    p.add_argument("--quick", action="store_true", help="each with --quick; nothing is written")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in ORDER]
    if unknown or not only:
        p.error(f"--only: choose from {', '.join(ORDER)}")
    failed = []
    for cmd in commands(only, args.quick):
        name = cmd[2].removeprefix("bench.")
        shown = " ".join(["python", *cmd[1:]])
        print(f"== {shown}", flush=True)
        if args.dry_run:
            continue
        t0 = time.monotonic()
        code = subprocess.run(cmd, check=False, cwd=REPO).returncode
        print(f"== {name}: exit {code} after {time.monotonic() - t0:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
