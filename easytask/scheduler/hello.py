"""An agent's hello checked against its schema at the server: slots, labels, version, facts."""

from __future__ import annotations

import json
import math
from typing import Any

from easytask.names import BadName, check_labels

MAX_FACTS_BYTES = 16 * 1024
MAX_FACTS = 64
MAX_TEXT = 256
MAX_GROUPS = 64

TEXT_FACTS = ("hostname", "os", "system", "distribution", "arch", "version", "python")
COUNT_FACTS = ("cpus", "running", "free_slots")
BYTE_FACTS = ("mem_available", "min_free_memory")  # may be null: the host or agent does not say
MAX_BYTES = 1 << 62
# what a heartbeat carries (easytask.agent.facts.headroom); the server adds `busy`
BEAT_FACTS = ("load", "cpus", "running", "free_slots", *BYTE_FACTS, "max_load")


class BadHello(ValueError):
    """The agent's hello does not follow the schema; the message says where."""


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT or "\x00" in value:
        raise BadHello(f"{where} must be a text of at most {MAX_TEXT} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadHello(f"{where} is not valid Unicode text") from exc
    return value


def _count(value: Any, where: str, least: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= 1_000_000:
        raise BadHello(f"{where} must be a whole number from {least}")
    return value


def _number(value: Any, where: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise BadHello(f"{where} must be a number of at least 0")
    return float(value)


def _texts(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_GROUPS:
        raise BadHello(f"{where} must be a list of at most {MAX_GROUPS} texts")
    return [_text(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _policy(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadHello("facts.policy must be an object")
    out: dict[str, Any] = {}
    if value.get("run_as") is not None:
        out["run_as"] = _text(value["run_as"], "facts.policy.run_as")
    else:
        out["run_as"] = None
    out["allow"] = _texts(value.get("allow") or [], "facts.policy.allow")
    out["file_dirs"] = _texts(value.get("file_dirs") or [], "facts.policy.file_dirs")
    if not isinstance(value.get("files", True), bool):
        raise BadHello("facts.policy.files must be true or false")
    out["files"] = value.get("files", True)
    out["slots"] = _count(value.get("slots", 1), "facts.policy.slots", 1)
    if value.get("become") is not None:  # the users runs may become (--allow-become)
        out["become"] = _texts(value["become"], "facts.policy.become")
    return out


def check_facts(facts: Any) -> dict[str, Any]:
    """The facts as the server keeps them; `BadHello` naming the first field that does not
    follow the schema. Known facts have their types (`load`: up to 3 numbers); unknown ones
    (a newer agent's) may only be short texts, numbers, true/false or null."""
    if facts is None:
        return {}
    if not isinstance(facts, dict):
        raise BadHello("facts must be an object")
    if len(facts) > MAX_FACTS:
        raise BadHello(f"facts may have at most {MAX_FACTS} fields")
    out: dict[str, Any] = {}
    for key, value in facts.items():
        where = f"facts.{_text(key, 'a fact name')}"
        if key in TEXT_FACTS:
            out[key] = _text(value, where)
        elif key in COUNT_FACTS:
            out[key] = _count(value, where)
        elif key == "load":
            if not isinstance(value, list) or len(value) > 3:
                raise BadHello(f"{where} must be a list of at most 3 numbers")
            out[key] = [_number(v, f"{where}[{i}]") for i, v in enumerate(value)]
        elif key == "policy":
            out[key] = _policy(value)
        elif key in BYTE_FACTS:
            whole = isinstance(value, int) and not isinstance(value, bool)
            if value is not None and not (whole and 0 <= value <= MAX_BYTES):
                raise BadHello(f"{where} must be a number of bytes or null")
            out[key] = value
        elif key == "max_load":
            out[key] = None if value is None else _number(value, where)
        elif value is None or isinstance(value, bool):
            out[key] = value
        elif isinstance(value, int | float):
            out[key] = _number(value, where) if isinstance(value, float) else value
        else:
            out[key] = _text(value, where)
    if len(json.dumps(out)) > MAX_FACTS_BYTES:
        raise BadHello(f"facts may take at most {MAX_FACTS_BYTES} bytes")
    return out


def check_beat(beat: Any) -> dict[str, Any]:
    """The headroom fields of a heartbeat, checked as the hello's facts are (`BadHello`);
    other fields are left out."""
    if not isinstance(beat, dict):
        raise BadHello("a heartbeat must be an object")
    return check_facts({k: v for k, v in beat.items() if k in BEAT_FACTS})


def clean_facts(facts: Any) -> dict[str, Any]:
    """Stored facts to show: those that follow the schema, field by field (a record written
    before the schema was checked cannot break a page)."""
    if not isinstance(facts, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in list(facts.items())[:MAX_FACTS]:
        try:
            out.update(check_facts({key: value}))
        except BadHello:
            continue
    return out


def stored_facts(text: str | None) -> dict[str, Any]:
    """An agent row's facts column as shown: parsed and cleaned (see `clean_facts`)."""
    try:
        return clean_facts(json.loads(text or "{}"))
    except ValueError:
        return {}


def _labels(value: Any) -> str:
    """The group labels of a hello as stored (comma-separated), each under the one name rule."""
    try:
        return ",".join(check_labels(_texts(value or [], "groups")))
    except BadName as exc:
        raise BadHello(f"groups: {exc}") from exc


def check_hello(hello: Any) -> dict[str, Any]:
    """The agent fields a hello sets (slots, group labels, version, facts as JSON); `BadHello`,
    also for an `enroll` token that is not a short text."""
    if not isinstance(hello, dict):
        raise BadHello("the hello must be an object")
    slots = hello.get("slots")
    if hello.get("enroll") is not None:
        _text(hello["enroll"], "enroll")
    return {
        "slots": _count(slots, "slots", 1) if slots else 4,
        "groups": _labels(hello.get("groups")),
        "version": _text(str(hello.get("version", "")), "version"),
        "facts": json.dumps(check_facts(hello.get("facts"))),
    }
