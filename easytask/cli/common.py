"""What the commands share: exit codes, the argument parser class and value types, the API
client, JSON and table output, and the escaping of text from hosts and the server for a terminal."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from easytask.config import Settings
from easytask.durations import parse_duration, parse_size
from easytask.errors import UsageError

if TYPE_CHECKING:
    from easytask.vault import Vault

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_START, EXIT_BUG = 0, 1, 2, 3, 70
FINAL = {"success", "failed", "terminated", "unreachable", "skipped"}


VAULT_SETTINGS = ("vault_password_file", "vault_id")


def add_vault_options(parser: argparse.ArgumentParser) -> None:
    """`--vault-password-file` and `--vault-id`: the settings that open Ansible Vault values."""
    parser.add_argument(
        "--vault-password-file",
        metavar="FILE",
        help="the Ansible Vault password: a file, or an executable that prints it "
        "(EASYTASK_VAULT_PASSWORD_FILE)",
    )
    parser.add_argument(
        "--vault-id",
        action="append",
        metavar="LABEL@FILE",
        help="a vault id's password file or script, repeatable (EASYTASK_VAULT_ID, "
        "comma-separated)",
    )


def play_vault(args: argparse.Namespace, settings: Settings) -> Vault:
    """The vault `play` opens: with --check the passwords of the settings; a run leaves the
    vaults shut (the server decrypts with its own), and refuses vault flags it would not read."""
    from easytask.vault import Vault
    from easytask.vaultpass import load_vault

    if args.check:
        return load_vault(settings.vault_password_file, settings.vault_id)
    if args.vault_password_file or args.vault_id:
        raise UsageError(
            "play: --vault-password-file/--vault-id are only read with --check; a playbook runs "
            "with the server's vault passwords (`easytask server --vault-password-file`)"
        )
    return Vault(locked=True)


class Parser(argparse.ArgumentParser):
    """The argument parser of every command: usage errors raise, and its subcommands and options
    are known (`subcommands`, `options`: for the generated reference and the tests that hold the
    documentation to the code)."""

    subcommands: dict[str, argparse.ArgumentParser] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.options: list[argparse.Action] = []  # the optional arguments, `-h` included
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        self.subcommands = action.choices
        return action

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings:
            self.options.append(action)
        return action

    def add_mutually_exclusive_group(self, **kwargs: Any) -> Any:
        group = super().add_mutually_exclusive_group(**kwargs)
        add = group.add_argument

        def add_argument(*args: Any, **kw: Any) -> argparse.Action:
            action = add(*args, **kw)
            if action.option_strings:
                self.options.append(action)
            return action

        group.add_argument = add_argument  # type: ignore[method-assign]
        return group

    def error(self, message: str) -> Any:  # usage errors exit 2 through our own path
        command = self.prog.partition(" ")[2]
        raise UsageError(f"{command}: {message}" if command else message)


def duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def api_client(settings: Settings) -> Any:
    from easytask.cli.client import Client

    return Client(settings.url, settings.token)


# C0 controls but tab, DEL and the C1 controls (0x9b is a one-character CSI): what a terminal acts on
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _shown(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def job_warnings(job: dict[str, Any]) -> None:
    """A submitted job's warnings (connection variables of its hosts that are not honoured),
    on stderr as Ansible prints its own."""
    for warning in job.get("warnings") or ():
        sys.stderr.write(f"[WARNING]: {escape_controls(str(warning))}\n")


def escape_controls(text: str, newlines: bool = False) -> str:
    """`text` with every control character a terminal would act on written visibly instead
    (ESC as `\\x1b`, CR as `\\r`, as Python's repr shows them); tabs are kept, and newlines too
    with `newlines`. Text from hosts or the server goes through this before a terminal sees it,
    so it cannot move the cursor, clear the screen, set the title or answer queries."""
    return (_CONTROL_BUT_NEWLINE if newlines else _CONTROL).sub(_shown, text)


def print_json(data: Any, out: TextIO) -> None:
    """`data` as indented JSON: control characters (and all non-ASCII) come out as \\u escapes."""
    out.write(json.dumps(data, indent=2) + "\n")


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], out: TextIO) -> None:
    """Rows in aligned columns; every cell's control characters escaped (`escape_controls`)."""
    cells = [[str(h) for h in headers]] + [
        ["" if c is None else str(c) for c in row] for row in rows
    ]
    # a tab is not escaped: one search over every cell tells whether any needs it (rarely)
    if _CONTROL.search("\t".join("\t".join(row) for row in cells)):
        cells = [[escape_controls(c) for c in row] for row in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out.write(
        "".join(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
            for row in cells
        )
    )


# -- following a job ------------------------------------------------------------------------


class LineSink(Protocol):
    """What takes a job's output lines as they arrive (printed, or kept for the end)."""

    def line(self, ev: dict[str, Any]) -> None: ...


def follow_job(client: Any, job_id: int, view: LineSink | None, run_id: int | None = None) -> None:
    """Show a job's (or one run's) lines through `view` until it ends."""
    # following a whole job, only its lines and its end are shown: no run-state events
    for ev in client.events(f"/api/jobs/{job_id}/events" + ("?runs=0" if run_id is None else "")):
        if ev["t"] == "line" and view is not None and (run_id is None or ev["run"] == run_id):
            view.line(ev)
        elif ev["t"] == "run" and run_id is not None and ev.get("id", ev.get("run")) == run_id:
            if ev["state"] in FINAL:
                return
        elif ev["t"] == "job":
            return


def follow_interruptible(client: Any, job_id: int, view: LineSink | None) -> bool:
    """Follow a job; the first Ctrl-C kills it and keeps following, a second leaves (True)."""
    killed = False
    while True:
        try:
            follow_job(client, job_id, view)
            return False
        except KeyboardInterrupt:
            if killed:
                sys.stderr.write("interrupted again: leaving; the server keeps the record\n")
                return True
            killed = True
            sys.stderr.write(f"\nterminating job {job_id} (Ctrl-C again to leave now)\n")
            client.post(f"/api/jobs/{job_id}/kill")
