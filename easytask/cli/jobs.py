"""Commands that submit work and follow it: `run`, `copy`, `checksum`, `fetch`, `play`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from easytask.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    api_client,
    duration_arg,
    escape_controls,
    follow_interruptible,
    follow_job,
    job_warnings,
    print_json,
    print_table,
)
from easytask.cli.grouped import GroupCollector, add_group_flag, run_grouped
from easytask.config import Settings
from easytask.durations import format_duration
from easytask.errors import UsageError

RAW_HELP = (
    "print the hosts' output as it is, terminal control sequences included (for a file or a "
    "pipe); by default they are shown escaped, e.g. \\x1b"
)


def add_parsers(sub: Any) -> None:
    """Register `run`, `copy`, `checksum` and `fetch`."""
    r = sub.add_parser("run", help="run an ad hoc command on the hosts a pattern matches")
    r.add_argument("pattern", help="host pattern, e.g. 'web:&prod:!db'")
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument("-a", "--args", dest="cmd", metavar="CMD", help="the shell command")
    what.add_argument(
        "--script",
        metavar="FILE",
        help="a local script: sent to each host, run, removed; its arguments go after `--`",
    )
    r.add_argument("--interpreter", help="run the script with this (default: its #! line)")
    r.set_defaults(script_args=[])
    r.add_argument(
        "--timeout", type=duration_arg, help="terminate a host's command after this long"
    )
    r.add_argument("--pending-timeout", type=duration_arg, help="wait this long for offline agents")
    r.add_argument("-f", "--forks", type=int, default=0, help="hosts at once (default: all)")
    r.add_argument("-l", "--limit", help="further limit the hosts with a pattern")
    r.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        metavar="VARS",
        help="key=value, @file.yml or a JSON/YAML mapping (repeatable); with -e the command is "
        "a template, rendered per host over its inventory vars and these",
    )
    r.add_argument(
        "-u", "--user", help="connect to agentless hosts as this user (agents run as their own)"
    )
    r.add_argument(
        "--list-hosts", action="store_true", help="print the hosts it would run on; run nothing"
    )
    r.add_argument(
        "-o",
        "--one-line",
        action="store_true",
        help="one line per host at the end: host | status | rc=N | (stdout) out\\nout",
    )
    r.add_argument(
        "--one",
        action="store_true",
        help="run on one host only: the connected agent the pattern matches with the most headroom "
        "(free slots, then load per CPU, then free memory), never a busy one while another is free",
    )
    r.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="export a secret to the command, masked as **** in the output: NAME=VALUE, or "
        "NAME alone for the stored credential NAME (`easytask secrets`), exported as NAME "
        "upper-cased with other characters as _ (repeatable)",
    )
    r.add_argument(
        "--secret-env",
        action="append",
        default=[],
        metavar="NAME",
        help="export NAME with its value in this environment, masked as **** (repeatable)",
    )
    r.add_argument(
        "-b",
        "--become",
        action="store_true",
        help="run the command as another user (--become-user, default root); agents allow it "
        "with --allow-become",
    )
    r.add_argument("--become-user", metavar="USER", help="the user to become (implies --become)")
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.add_argument("--raw", action="store_true", help=RAW_HELP)
    add_group_flag(r)
    r.set_defaults(func=cmd_run)

    cp = sub.add_parser("copy", help="send a file or directory to every host the pattern matches")
    cp.add_argument("pattern")
    cp.add_argument("src", help="local file or directory")
    cp.add_argument("dest", help="destination path on the hosts")
    cp.add_argument("--mode", help="file mode, e.g. 0644")
    cp.add_argument("--owner", help="chown the copied files to this user[:group]")
    cp.add_argument(
        "--backup", action="store_true", help="keep the previous version as DEST.TIMESTAMP~"
    )
    cp.add_argument("--timeout", type=duration_arg)
    cp.add_argument("--pending-timeout", type=duration_arg)
    cp.add_argument("--format", choices=("text", "json"), default="text")
    cp.set_defaults(func=cmd_copy)

    ck = sub.add_parser("checksum", help="SHA-256 of a file on every host, grouped by content")
    ck.add_argument("pattern")
    ck.add_argument("path")
    ck.add_argument("--expect", metavar="SHA256", help="exit 1 unless every host has this digest")
    ck.add_argument("--pending-timeout", type=duration_arg)
    ck.add_argument("--format", choices=("text", "json"), default="text")
    ck.set_defaults(func=cmd_checksum)

    fe = sub.add_parser("fetch", help="bring a file back from every host into DEST_DIR/HOST/")
    fe.add_argument("pattern")
    fe.add_argument("path")
    fe.add_argument("dest_dir")
    fe.add_argument("--pending-timeout", type=duration_arg)
    fe.set_defaults(func=cmd_fetch)


class RunView:
    """Prints a job's live events: `host | line`, then a summary. The lines' control characters
    are escaped unless `raw`; host names always are."""

    def __init__(self, out: TextIO, hosts: list[str], raw: bool = False) -> None:
        self.out = out
        self.raw = raw
        self.width = max((len(h) for h in hosts), default=4)
        self.seen: dict[int, int] = {}
        color = out.isatty() and not os.environ.get("NO_COLOR")
        self.red = "\033[31m" if color else ""
        self.dim = "\033[2m" if color else ""
        self.reset = "\033[0m" if color else ""

    def line(self, ev: dict[str, Any]) -> None:
        if ev["seq"] <= self.seen.get(ev["run"], 0):
            return
        self.seen[ev["run"]] = ev["seq"]
        host = escape_controls(ev["host"]).ljust(self.width)
        text = ev["text"] if self.raw else escape_controls(ev["text"])
        if ev["stream"] == "stderr":
            self.out.write(f"{self.red}{host} ! {text}{self.reset}\n")
        elif ev["stream"] == "system":
            self.out.write(f"{self.dim}{host} * {text}{self.reset}\n")
        else:
            self.out.write(f"{host} | {text}\n")
        self.out.flush()


SUMMARY_FIELDS = "host,state,exit_code,duration,ran_as,reason"  # of each run, for `_summary`


def _summary(data: dict[str, Any], elapsed: float, out: TextIO) -> int:
    runs = data["runs"]
    rows = [
        (
            r["host"],
            r["state"],
            "" if r["exit_code"] is None else r["exit_code"],
            format_duration(r["duration"]) if r["duration"] is not None else "-",
            r.get("ran_as") or "-",
            r["reason"],
        )
        for r in runs
    ]
    out.write("\n")
    print_table(rows, ("HOST", "STATUS", "EXIT", "DURATION", "AS", "REASON"), out)
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out.write(
        f"\njob {data['job']['id']}: {len(runs)} host(s): {parts} in {format_duration(elapsed)}\n"
    )
    return EXIT_OK if all(r["state"] == "success" for r in runs) else EXIT_FAILED


def _file_payload(path: Path, client: Any) -> dict[str, Any]:
    """A local file (streamed to POST /api/uploads) or directory (base64) as the API takes it."""
    import base64

    if path.is_file():
        return {"name": path.name, "upload": client.upload(path)["upload"]}
    if path.is_dir():
        files = {
            p.relative_to(path).as_posix(): base64.b64encode(p.read_bytes()).decode()
            for p in sorted(path.rglob("*"))
            if p.is_file()
        }
        return {"name": path.name, "files": files}
    if not path.is_file():
        raise UsageError(f"{path}: no such file or directory")
    return {"name": path.name, "data": base64.b64encode(path.read_bytes()).decode()}


def cmd_run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    import shlex

    if args.list_hosts:
        return _list_hosts(api_client(settings), args.pattern, args.limit, args.format, out)
    body: dict[str, Any] = {
        "pattern": args.pattern,
        "command": args.cmd or "",
        "timeout": args.timeout,
        "pending_timeout": args.pending_timeout,
        "forks": args.forks,
        "one": args.one,
    }
    if args.limit:
        body["limit"] = args.limit
    if args.extra_vars is not None:
        from easytask.plan import parse_extra_vars

        body["extra_vars"] = parse_extra_vars(args.extra_vars)
    if args.user:
        body["user"] = args.user
    given, stored = _secrets(args.secret, args.secret_env)
    if given:
        body["secrets"] = given
    if stored:
        body["credentials"] = stored
    if args.become or args.become_user:
        body["become"] = True
    if args.become_user:
        body["become_user"] = args.become_user
    if args.script:
        spec = _file_payload(Path(args.script), api_client(settings))
        spec.update(args=shlex.join(args.script_args), interpreter=args.interpreter)
        body.update(kind="script", script=spec)
    elif args.script_args:
        raise UsageError("run: arguments after the pattern are only for --script")
    if args.group:
        return run_grouped(args, body, settings, out)
    if args.one_line:
        if args.format == "json":
            raise UsageError("run: -o/--one-line is a text format; leave out --format json")
        return _one_line(body, settings, out, args.raw)
    return _submit_and_follow(body, args.format, settings, out, args.raw)


def server_hosts(client: Any, pattern: str, limit: str | None) -> dict[str, Any]:
    """`GET /api/hosts`: the hosts a pattern (within a limit pattern) matches on the server."""
    from urllib.parse import urlencode

    query = {"pattern": pattern, **({"limit": limit} if limit else {})}
    data: dict[str, Any] = client.get("/api/hosts?" + urlencode(query))
    return data


def _list_hosts(client: Any, pattern: str, limit: str | None, fmt: str, out: TextIO) -> int:
    """`--list-hosts`: the hosts a pattern (within --limit) matches on the server, as Ansible
    prints them."""
    data = server_hosts(client, pattern, limit)
    if fmt == "json":
        print_json(data, out)
        return EXIT_OK
    hosts = data["hosts"]
    out.write(f"  hosts ({len(hosts)}):\n")
    for host in hosts:
        out.write(f"    {escape_controls(host['name'])}\n")
    return EXIT_OK


ONE_LINE_FIELDS = "id,host,state,exit_code,reason"  # of each run, for `OneLineView.write`


class OneLineView(GroupCollector):
    """`-o`: a host's output kept until its run ends, then printed on one line (newlines as
    the two characters \\n), as Ansible's one-line callback does."""

    def __init__(self, raw: bool) -> None:
        super().__init__()
        self.raw = raw

    def write(self, runs: list[dict[str, Any]], out: TextIO) -> None:
        for run in runs:
            parts = [escape_controls(run["host"]), run["state"].upper()]
            if run["exit_code"] is not None:
                parts.append(f"rc={run['exit_code']}")
            for stream in ("stdout", "stderr"):
                lines = self.lines.get((run["id"], stream))
                if lines:
                    text = "\\n".join(lines)
                    parts.append(f"({stream}) " + (text if self.raw else escape_controls(text)))
            if run["reason"] and run["state"] != "success":
                parts.append(f"({escape_controls(run['reason'])})")
            out.write(" | ".join(parts) + "\n")


def _one_line(body: dict[str, Any], settings: Settings, out: TextIO, raw: bool) -> int:
    client = api_client(settings)
    sub = client.post("/api/jobs?runs=0", body)
    job_warnings(sub["job"])
    if awaits_approval(sub, out):
        return EXIT_OK
    view = OneLineView(raw)
    if follow_interruptible(client, sub["job"]["id"], view):
        return 130
    data: dict[str, Any] = client.get(f"/api/jobs/{sub['job']['id']}", fields=ONE_LINE_FIELDS)
    view.write(data["runs"], out)
    return EXIT_OK if all(r["state"] == "success" for r in data["runs"]) else EXIT_FAILED


def _secrets(items: list[str], from_env: list[str]) -> tuple[dict[str, str], list[str]]:
    """Secret values (`--secret NAME=VALUE`, `--secret-env NAME`: from this process's
    environment) and the names of stored credentials (`--secret NAME`)."""
    given: dict[str, str] = {}
    stored: list[str] = []
    for item in items:
        name, sep, value = item.partition("=")
        if sep:
            given[name] = value
        else:
            stored.append(name)
    for name in from_env:
        if name not in os.environ:
            raise UsageError(f"--secret-env {name}: no such environment variable")
        given[name] = os.environ[name]
    return given, stored


def cmd_copy(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    spec = _file_payload(Path(args.src), api_client(settings))
    spec.update(dest=args.dest, mode=args.mode, owner=args.owner, backup=args.backup)
    body = {
        "pattern": args.pattern,
        "kind": "copy",
        "copy": spec,
        "timeout": args.timeout,
        "pending_timeout": args.pending_timeout,
    }
    return _submit_and_follow(body, args.format, settings, out)


def cmd_checksum(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    import shlex

    q = shlex.quote(args.path)
    if args.path.startswith("~/"):  # each host's own home directory
        q = '"$HOME"/' + shlex.quote(args.path[2:])
    command = (
        f"if [ -f {q} ]; then sha256sum -- {q} | cut -d' ' -f1; "
        f"elif [ -e {q} ]; then echo 'not a regular file' >&2; exit 2; else echo missing; fi"
    )
    client = api_client(settings)
    sub_data = client.post(
        "/api/jobs",
        {
            "pattern": args.pattern,
            "command": command,
            "name": f"checksum {args.path}",
            "pending_timeout": args.pending_timeout,
        },
    )
    job_id = sub_data["job"]["id"]
    follow_job(client, job_id, None)
    data = client.get(f"/api/jobs/{job_id}")
    digests: dict[str, str] = {}
    for run in data["runs"]:
        if run["state"] != "success":
            digests[run["host"]] = f"error: {run['state']} ({run['reason']})"
            continue
        lines = client.get(f"/api/runs/{run['id']}/log")["lines"]
        text = next((ln["text"] for ln in lines if ln["stream"] == "stdout"), "")
        digests[run["host"]] = text.strip() or "missing"
    groups: dict[str, list[str]] = {}
    for host, digest in digests.items():
        groups.setdefault(digest, []).append(host)
    if args.format == "json":
        print_json({"path": args.path, "hosts": digests, "groups": groups}, out)
    else:
        for digest, hosts in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            line = f"{digest}  {len(hosts)} host(s): {', '.join(sorted(hosts))}"
            out.write(escape_controls(line) + "\n")
    if args.expect:
        bad = sorted(h for h, d in digests.items() if d != args.expect.lower())
        if bad:
            if args.format == "text":
                out.write(f"differ from --expect: {escape_controls(', '.join(bad))}\n")
            return EXIT_FAILED
        return EXIT_OK
    if len(groups) > 1:
        if args.format == "text":
            minority = sorted(groups.items(), key=lambda kv: len(kv[1]))[:-1]
            odd = sorted(h for _, hosts in minority for h in hosts)
            out.write(f"content differs: {escape_controls(', '.join(odd))}\n")
        return EXIT_FAILED
    return EXIT_OK if all(not d.startswith("error") for d in digests) else EXIT_FAILED


def cmd_fetch(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    sub_data = client.post(
        "/api/jobs",
        {
            "pattern": args.pattern,
            "kind": "fetch",
            "fetch": {"path": args.path},
            "pending_timeout": args.pending_timeout,
        },
    )
    job_id = sub_data["job"]["id"]
    follow_job(client, job_id, None)
    data = client.get(f"/api/jobs/{job_id}")
    dest = Path(args.dest_dir)
    failed = 0
    for run in data["runs"]:
        if run["state"] != "success":
            out.write(escape_controls(f"{run['host']}: {run['state']}: {run['reason']}") + "\n")
            failed += 1
            continue
        target = dest / run["host"] / (Path(args.path).name or "file")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_bytes(f"/api/runs/{run['id']}/fetched"))
        out.write(
            escape_controls(f"{run['host']}: {target} ({target.stat().st_size} bytes)") + "\n"
        )
    return EXIT_FAILED if failed else EXIT_OK


def _submit_and_follow(
    body: dict[str, Any], fmt: str, settings: Settings, out: TextIO, raw: bool = False
) -> int:
    started = time.monotonic()
    data = post_and_follow(api_client(settings), "/api/jobs", body, fmt, out, raw, SUMMARY_FIELDS)
    if data is None:
        return 130
    if data["job"]["state"] == "awaiting approval":
        return EXIT_OK
    if fmt == "json":
        return EXIT_OK if all(r["state"] == "success" for r in data["runs"]) else EXIT_FAILED
    return _summary(data, time.monotonic() - started, out)


def awaits_approval(sub: dict[str, Any], out: TextIO) -> bool:
    """Whether an approval rule holds the submitted job (said on `out`, with how to decide
    it)."""
    if sub["job"]["state"] != "awaiting approval":
        return False
    job_id = sub["job"]["id"]
    rules = ", ".join((sub.get("approval") or {}).get("rules") or []) or "-"
    out.write(
        escape_controls(
            f"job {job_id}: awaiting approval (approval rule {rules}); an admin decides it: "
            f"easytask approve {job_id} -m COMMENT"
        )
        + "\n"
    )
    return True


def submitted_hosts(sub: dict[str, Any]) -> list[str]:
    """The hosts of a submitted job's runs: its answer's `hosts` (asked with `?runs=0`), or
    from its `runs` (a server that does not know `?runs=0`)."""
    if "hosts" in sub:
        return list(sub["hosts"])
    return [r["host"] for r in sub["runs"]]


def post_and_follow(
    client: Any,
    path: str,
    body: dict[str, Any],
    fmt: str,
    out: TextIO,
    raw: bool = False,
    fields: str | None = None,
) -> dict[str, Any] | None:
    """Submit a job, show its output until it ends (`raw`: control characters unescaped), and
    return it as it ended (printed as JSON with `fmt` json; in text, with `fields`, only these
    fields of its runs); None if interrupted."""
    sub = client.post(path + "?runs=0", body)  # the runs' hosts, not the runs
    job_id = sub["job"]["id"]
    job_warnings(sub["job"])
    if awaits_approval(sub, sys.stderr if fmt == "json" else out):  # stdout: JSON only
        if fmt == "json":
            print_json(sub, out)
        return sub
    view = RunView(out, submitted_hosts(sub), raw) if fmt == "text" else None
    if follow_interruptible(client, job_id, view):
        return None
    if fmt == "json" or fields is None:
        data: dict[str, Any] = client.get(f"/api/jobs/{job_id}")
    else:
        data = client.get(f"/api/jobs/{job_id}", fields=fields)
    if fmt == "json":
        print_json(data, out)
    return data
