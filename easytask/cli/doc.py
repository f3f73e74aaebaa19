"""The CLI reference in Markdown, generated from the argument parser so it cannot drift."""

from __future__ import annotations

import argparse

from easytask.cli.main import build_parser


def _section(name: str, parser: argparse.ArgumentParser, depth: int) -> list[str]:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
    out = [f"{'#' * depth} `{name}`", ""]
    help_text = parser.description or ""
    if help_text:
        out += [help_text, ""]
    out += ["```text", parser.format_help().rstrip(), "```", ""]
    for sub_name, sub in getattr(parser, "subcommands", {}).items():
        out += _section(f"{name} {sub_name}", sub, depth + 1)
    return out


def render() -> str:
    """The whole reference."""
    parser = build_parser()
    lines = [
        "# CLI reference",
        "",
        "Generated from the parser (`python -m easytask.cli.doc > docs/cli.md`); a test keeps it",
        "current. Server URL and token come from `--url`/`--token`, `EASYTASK_URL`/`EASYTASK_TOKEN`,",
        "or a config file (`EASYTASK_CONFIG`, `./.easytask/config.toml`, `~/.config/easytask/config.toml`).",
        "Each option followed by `(EASYTASK_NAME)` is a setting: a flag beats that variable, which",
        "beats the config-file key `name`; all settings are in [operations](operations.md#settings).",
        "The agent's own variables (`EASYTASK_AGENT_*`) have no config-file key.",
        "",
        "Exit codes: 0 all good, 1 some hosts failed (or were terminated or unreachable), 2 usage,",
        "configuration, inventory, pattern or YAML error, 3 could not start or reach the server,",
        "70 unexpected error (the traceback is written to a file whose path is printed).",
        "",
        "Text from hosts and the server (command output, host and task names, reasons) is printed",
        "with its control characters escaped as `\\x1b`, `\\r` and so on (tabs kept), so it cannot",
        "move the cursor, retitle or clear the terminal; `run`, `play`, `logs` and `groups` take",
        "`--raw` to print the output as it was sent, e.g. into a file. `--format json` escapes them",
        "as JSON does.",
        "",
        "Grouped output, as `dshbak -c` or `clush -b` show it: `easytask run PATTERN --group -a CMD`",
        "waits for the job to end, then prints hosts with the same output and exit code as one",
        "block under their host list in inventory range notation (`== web[01:40], db1 (41 hosts):",
        "success, exit 0`), the biggest group first; `easytask groups JOB` does the same for a",
        "finished job. With `--format json` both print a list of groups: `hosts`, `hosts_text`,",
        "`exit_code`, `state`, `stdout`, `stderr` (and `task` for a playbook's runs).",
        "",
    ]
    lines += _section("easytask", parser, 2)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
