"""Rewrite the golden files of the playbook cases from the current code (not needed by the tests).

    .venv/bin/python tests/cases/playbooks/regen.py

errors/NAME.yml -> errors/NAME.txt: the rendered error of loading it (from this directory).
check/NAME.yml and the examples in playbooks/ -> check/NAME.txt: `easytask play --check` output
against the sample inventory, with `# limit: PATTERN` and `# extra: -e VALUE` header comments of
a case applied. Review the diff before committing: these files are what the tests hold us to.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
sys.path.insert(0, str(REPO))

from easytask.errors import PlaybookError  # noqa: E402
from easytask.inventory import load_inventory  # noqa: E402
from easytask.plan import (  # noqa: E402
    check_playbook,
    format_check,
    parse_extra_vars,
    plan_playbook,
)
from easytask.playbook import load_playbook  # noqa: E402


def options(path: Path) -> tuple[str | None, list[str]]:
    """The `# limit:` and `# extra:` header comments of a check case."""
    limit, extra = None, []
    for line in path.read_text().splitlines():
        if line.startswith("# limit:"):
            limit = line.split(":", 1)[1].strip()
        elif line.startswith("# extra:"):
            extra.append(line.split(":", 1)[1].strip())
    return limit, extra


def check_output(path: Path, shown: str) -> str:
    """--check output of a playbook against the sample inventory (paths shown relative)."""
    limit, extra = options(path)
    plan = plan_playbook(
        load_playbook(shown),
        load_inventory(REPO / "inventory"),
        extra_vars=parse_extra_vars(extra),
        limit=limit,
    )
    return format_check(plan, check_playbook(plan)) + "\n"


def main() -> None:
    os.chdir(HERE)
    for case in sorted((HERE / "errors").glob("*.yml")):
        try:
            load_playbook(case.relative_to(HERE))
        except PlaybookError as exc:
            case.with_suffix(".txt").write_text(exc.render() + "\n")
        else:
            print(f"{case.name} is valid; an error case must not be", file=sys.stderr)
    for case in sorted((HERE / "check").glob("*.yml")):
        case.with_suffix(".txt").write_text(check_output(case, str(case.relative_to(HERE))))
    os.chdir(REPO)
    for example in sorted((REPO / "playbooks").glob("*.yml")):
        target = HERE / "check" / "examples" / example.with_suffix(".txt").name
        target.parent.mkdir(exist_ok=True)
        target.write_text(check_output(example, str(example.relative_to(REPO))))


if __name__ == "__main__":
    main()
