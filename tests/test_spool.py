"""The agent's spool records: written in batches, read back in runs, cut where the server cuts."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from easytask.agent.spool import HEADER, Record, RecordReader, Spool, encode_records, spool_keys
from easytask.agent.supervisor import _Splitter
from easytask.loglines import MAX_LINE_BYTES, LineSplitter

LINES = [
    ("stdout", [b"one\n", b"two\n"]),
    ("stderr", [b"oops\n"]),
    ("stdout", [b"three\n", b"", b"last, no newline"]),
]


def _spool() -> bytes:
    out = b""
    seq = 1
    for stream, lines in LINES:
        out += encode_records(seq, stream, lines)
        seq += len(lines)
    return out


def test_encode_records_is_one_record_per_line() -> None:
    """A batch encodes exactly as its lines encoded one by one, numbered from the first seq."""
    one_by_one = b"".join(
        Record(seq, "stderr", data).encode()
        for seq, data in enumerate([b"a\n", b"", b"c" * 300], 7)
    )
    assert encode_records(7, "stderr", [b"a\n", b"", b"c" * 300]) == one_by_one


@pytest.mark.parametrize("seed", range(20))
def test_reader_runs_survive_any_chunking(seed: int) -> None:
    """Records cut anywhere between reads come back as the same runs of each stream, in order."""
    data = _spool()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
    reader = RecordReader()
    runs: list[tuple[str, bytes]] = []
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        for stream, piece in reader.feed_runs(data[start:end]):
            if runs and runs[-1][0] == stream:
                runs[-1] = (stream, runs[-1][1] + piece)
            else:
                runs.append((stream, piece))
    assert runs == [(stream, b"".join(lines)) for stream, lines in LINES]


def test_reader_runs_skip_what_was_already_stored() -> None:
    """Only records after `after_seq` are returned; a run that loses all its records vanishes."""
    assert RecordReader().feed_runs(_spool(), after_seq=3) == [
        ("stdout", b"three\n" + b"" + b"last, no newline")
    ]
    assert RecordReader().feed_runs(_spool(), after_seq=6) == []


def test_reader_records_and_runs_agree() -> None:
    """Records read one by one hold what the runs hold, with their seqs 1..n."""
    records = RecordReader().feed(_spool())
    assert [r.seq for r in records] == list(range(1, 7))
    assert [(r.stream, r.data) for r in records] == [
        (stream, line) for stream, lines in LINES for line in lines
    ]
    partial = RecordReader()
    assert partial.feed(_spool()[: HEADER.size + 2]) == []
    assert partial.feed(_spool()[HEADER.size + 2 :])[0] == Record(1, "stdout", b"one\n")


@pytest.mark.parametrize(
    "chunks",
    [
        [b"a\nbb\r\n\nccc", b"c\n", b"tail"],
        [b"caf\xc3\xa9\n\xff\xfe\r\n", b"\xe2\x82", b"\xac\n"],
        [b"x" * (MAX_LINE_BYTES + 5) + b"\r\n", b"y" * 10 + b"\n"],
        [b"z" * (MAX_LINE_BYTES - 1), b"\r", b"\n"],
        [b"w" * (2 * MAX_LINE_BYTES + 3)],
    ],
)
def test_supervisor_cuts_lines_where_the_server_does(chunks: list[bytes]) -> None:
    """The agent numbers exactly the lines the server numbers, with the same bytes in each."""
    agent = _Splitter("stdout")
    server = LineSplitter("stdout")
    pieces: list[bytes] = []
    sizes: list[int] = []
    for chunk in chunks:
        pieces += agent.feed(chunk)
        sizes += server.feed(chunk)[1]
    pieces += agent.tail()
    sizes += server.close()[1]
    assert [len(p) for p in pieces] == sizes
    assert b"".join(pieces) == b"".join(chunks)


def test_proc_record_is_read_back_and_never_taken_for_a_line(tmp_path: Path) -> None:
    """The supervisor's first record names the command's group; readers of lines skip it."""
    spool = Spool(tmp_path, "7-1")
    spool.create()
    with pytest.raises(FileExistsError):
        spool.create()  # a run key is started once
    with spool.out_path.open("ab") as fh:
        fh.write(Spool.proc_record(os.getpid(), 0, 4242) + _spool())
    assert spool.pgid == 4242
    assert spool.supervisor_alive()
    assert [r.seq for r in spool.records()] == list(range(1, 7))
    assert RecordReader().feed_runs(spool.out_path.read_bytes()) == [
        (stream, b"".join(lines)) for stream, lines in LINES
    ]
    assert spool.exit_info() is None
    spool.write_exit({"exit_code": 3, "lines": 6})
    # the exit record is read from the end and never taken for a line; the group is still known
    assert not spool.out_path.exists() and spool.exists()
    assert spool.exit_info() == {"exit_code": 3, "lines": 6}
    assert [r.seq for r in spool.records()] == list(range(1, 7))
    assert RecordReader().feed_runs(spool.done_path.read_bytes(), after_seq=5) == [
        ("stdout", b"last, no newline")
    ]
    assert spool.pgid == 4242


def test_spools_are_counted_by_their_output_file(tmp_path: Path) -> None:
    """A spool with an exit record has ended; removing it leaves nothing behind."""
    running, ended = Spool(tmp_path, "1-1"), Spool(tmp_path, "2-1")
    for spool in (running, ended):
        spool.create()
    ended.write_exit({"exit_code": 0})
    assert spool_keys(tmp_path) == (["1-1", "2-1"], {"2-1"})
    assert ended.exit_info() == {"exit_code": 0} and running.exit_info() is None
    ended.remove()
    running.remove()
    assert list(tmp_path.iterdir()) == []


def test_an_acknowledged_spool_file_is_the_next_runs(tmp_path: Path) -> None:
    """Retiring an ended spool keeps its file, emptied, as the spare; the next run gets it."""
    first = Spool(tmp_path, "1-1")
    first.create()
    with first.out_path.open("ab") as fh:
        fh.write(Spool.proc_record(os.getpid(), 0, 99) + _spool())
    assert not first.retire()  # still running: kept
    first.write_exit({"exit_code": 0})
    assert first.retire() and not first.exists()
    assert (tmp_path / ".spare").stat().st_size == 0  # the run's output does not stay on disk
    inode = (tmp_path / ".spare").stat().st_ino
    second = Spool(tmp_path, "2-1")
    second.create()
    assert second.out_path.stat().st_ino == inode and second.out_path.read_bytes() == b""
    assert not (tmp_path / ".spare").exists()
    with pytest.raises(FileExistsError):
        second.create()
    third = Spool(tmp_path, "3-1")
    third.create()  # no spare: a new file
    for spool in (second, third):
        spool.write_exit({"exit_code": 0})
        assert spool.retire()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".spare"]
    assert spool_keys(tmp_path) == ([], set())
