"""Search in a run's log: literal text, case ignored, same answer with or without the index."""

from __future__ import annotations

from pathlib import Path

import pytest

from easytask.store.db import Store, sqlite_url
from easytask.store.lines import INDEX_CANDIDATES, POSITION_MARKS, index_words, like_pattern
from easytask.store.models import Job, Run
from tests.support import PostgresCluster


@pytest.mark.parametrize(
    ("needle", "words", "prefix"),
    [
        ("line 0777777", [], "0777777"),
        ("ERROR line", [], "line"),
        ("no such text", ["such"], "text"),
        ("worker=3 processed", ["3"], "processed"),
        ("disk full ", ["full"], None),
        (" disk full", ["disk"], "full"),
        ("a_b c-d", ["b", "c"], "d"),
        ("x 50%", ["50"], None),
        ("NEAR(a b)", ["a", "b"], None),
        ('say "hi" there', ["hi"], "there"),
        ("x café au lait", ["au"], "lait"),  # "caf" touches a non-ASCII letter: not used
        ("naïve x", [], "x"),
        ("word", [], None),
        ("%", [], None),
        ("", [], None),
    ],
)
def test_index_words(needle: str, words: list[str], prefix: str | None) -> None:
    """Inner words need a separator on both sides, the last one before it; longest first."""
    assert index_words(needle) == (words, prefix)


@pytest.mark.parametrize(
    ("needle", "pattern", "escape"),
    [
        ("plain text", "%plain text%", None),
        ("50%", "%50\\%%", "\\"),
        ("a_b", "%a\\_b%", "\\"),
        ("c:\\tmp", "%c:\\\\tmp%", "\\"),
        ('it\'s "q"', '%it\'s "q"%', None),
    ],
)
def test_like_pattern(needle: str, pattern: str, escape: str | None) -> None:
    """Only % _ and the escape character are escaped, and an escape is named only then."""
    assert like_pattern(needle) == (pattern, escape)


LINES = [
    "progress 50% done",
    "progress 50 percent done",
    "a_b literal underscore",
    "axb no underscore",
    "it's quoted",
    'say "hi" there',
    "back\\slash path",
    "MiXeD CaSe Word",
    "NEAR(a b) AND OR NOT * ^ -x col:val",
    "near a b",
    "worker=3 processed batch of 17 items",
    "worker=13 processed batch of 7 items",
    "café au lait, naïve",
    "prefixes: underline, undertow",
]
NEEDLES = [
    "50%",
    "50 p",
    "a_b",
    "_",
    "%",
    "it's",
    '"hi" there',
    "hi there",
    "\\",
    "back\\slash",
    "mixed case",
    "CASE WORD",
    "NEAR(a b)",
    "AND OR NOT *",
    "a b",
    " a b",
    "near",
    "=3 processed",
    "worker=3 proc",
    "r=13 pro",
    "of 7 items",
    "of 17 items",
    "batch of 1",
    "au lait",
    "naïve",
    "ve",
    ": under",
    "underline, under",
    "no such words",
    "x",
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A store at the current schema, on each backend."""
    if request.param == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        url = cluster.new_database(empty=True)
    else:
        url = sqlite_url(tmp_path / "easytask.db")
    store = Store(url)
    store.create_schema()
    return store


def add_run(store: Store, lines: list[str]) -> int:
    _, (run,) = store.create_job(Job(command="x"), [Run(host="h", command="x")])
    assert run.id is not None
    store.write_lines([(run.id, n, 0.0, "stdout", "INFO", t) for n, t in enumerate(lines, 1)])
    return run.id


def expected(lines: list[str], needle: str) -> list[int]:
    """What a search must find: lines containing the needle, ASCII letters in any case."""

    def fold(text: str) -> str:
        return "".join(ch.lower() if ch.isascii() else ch for ch in text)

    return [n for n, t in enumerate(lines, 1) if fold(needle) in fold(t)]


def test_search_finds_exactly_the_lines_containing_the_text(store: Store) -> None:
    """Index-assisted or not, a search returns the lines that contain the needle, no others."""
    other = add_run(store, [t.upper() for t in LINES])  # the same words in another run
    run = add_run(store, LINES)
    for needle in NEEDLES:
        found = store.search_lines(run, needle)
        assert found == [(n, n - 1) for n in expected(LINES, needle)], needle
        assert store.search_lines(run, needle, levels=["INFO"]) == found, needle
        # the log API's grep reads the same lines, after a seq and up to a limit too
        want = expected(LINES, needle)
        assert [line.seq for line in store.read_lines(run, grep=needle)] == want, needle
        later = [n for n in want if n > 3][:2]
        got = store.read_lines(run, grep=needle, after_seq=3, limit=2, levels=["INFO"])
        assert [line.seq for line in got] == later, needle
        assert all(line.text == LINES[line.seq - 1] for line in got)
    assert store.search_lines(other, "mixed case") == [(8, 7)]
    store.close()


def test_a_common_word_falls_back_to_reading_every_line(store: Store) -> None:
    """A word the index names too often still finds every match, in order, up to the limit."""
    count = INDEX_CANDIDATES + 500
    lines = [f"step {n} common word" for n in range(count)]
    run = add_run(store, lines)
    assert len(store.search_lines(run, " common word", limit=count + 1)) == count
    assert store.search_lines(run, "p 17 common", limit=5) == [(18, 17)]
    assert store.search_lines(run, "5 common w", limit=3) == [(6, 5), (16, 15), (26, 25)]
    store.close()


@pytest.mark.parametrize(
    "levels",
    [
        ["INFO", "WARN", "ERROR"],  # few lines hidden: counted from the hidden ones
        ["ERROR"],  # few lines shown: counted from the shown ones
        ["INFO", "ERROR"],  # many of both
        ["DEBUG", "INFO", "WARN", "ERROR"],
    ],
)
def test_positions_in_a_level_filtered_log(store: Store, levels: list[str]) -> None:
    """A match's position counts the lines of the chosen levels before it, however many."""
    count = 4 * POSITION_MARKS + 4000
    texts = [f"n={n} mark" for n in range(1, count + 1)]

    def level(n: int) -> str:
        # spread evenly but not in a pattern: 10% DEBUG, 10% ERROR, 40% INFO, 40% WARN
        k = (n * 2654435761 >> 7) % 10
        return "DEBUG" if k == 0 else "ERROR" if k == 1 else "INFO" if k < 6 else "WARN"

    level_of = {n: level(n) for n in range(1, count + 1)}
    _, (run,) = store.create_job(Job(command="x"), [Run(host="h", command="x")])
    assert run.id is not None
    store.write_lines([(run.id, n, 0.0, "stdout", level_of[n], t) for n, t in enumerate(texts, 1)])
    shown = [n for n in range(1, count + 1) if level_of[n] in levels]
    position = {n: i for i, n in enumerate(shown)}
    want = [(n, position[n]) for n in shown if texts[n - 1].endswith("77 mark")]
    assert len(want) > 10
    assert store.search_lines(run.id, "77 mark", levels=levels) == want
    store.close()
