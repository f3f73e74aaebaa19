"""Audit checkpoints: written as the chain grows, signed, and checked with the chain."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from easytask.scheduler.auditanchor import AuditAnchor, CheckpointWebhook
from easytask.statefiles import load_or_create_secret
from easytask.store import checkpoints
from easytask.store.db import Store, sqlite_url


def test_checkpoints_follow_the_chain_and_anchor_the_rows_before_the_key(tmp_path: Path) -> None:
    """Plain rows from before the key verify; a checkpoint comes every `every` events; rows
    deleted from the end, or a plain row after the switch, fail verification."""

    async def main() -> None:
        store = Store(sqlite_url(tmp_path / "easytask.db"))
        try:
            store.create_schema()
            store.audit("old", "before.key", "cli", {})  # written before the key existed
            store.use_audit_key(load_or_create_secret(tmp_path / "audit.key"))
            assert (tmp_path / "audit.key").stat().st_mode & 0o777 == 0o600
            anchor = AuditAnchor(store, checkpoints.open_log(tmp_path), every=3, interval=3600)
            assert (await anchor.checkpoint(force=True) or {})["head_id"] == 1
            store.audit("a", "one", "cli", {})
            store.audit("a", "two", "cli", {})
            assert await anchor.checkpoint() is None  # 2 events: not yet
            store.audit("a", "three", "cli", {})
            written = await anchor.checkpoint()
            assert written is not None and written["head_id"] == 4 and written["count"] == 4
            store.audit("a", "four", "cli", {})
            await anchor.close()  # shutdown writes the last one
            lines = [
                json.loads(x) for x in (tmp_path / "audit.checkpoints").read_text().splitlines()
            ]
            assert [(p["head_id"], p["plain_until"]) for p in lines] == [(1, 1), (4, 1), (5, 1)]
            assert (await anchor.verify())["ok"] is True
            with store.engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM audit_event WHERE id = 5")
            result = await anchor.verify()
            assert not result["ok"] and result["problem"].startswith("truncated: ")
        finally:
            store.close()

    asyncio.run(main())


def test_a_receiver_that_never_answers_holds_nothing_up(tmp_path: Path) -> None:
    """With a checkpoint webhook whose receiver accepts connections and never answers, writing
    checkpoints does not wait for it; each is tried `attempts` times, the oldest is dropped
    when the queue is full, and closing stops the sender."""

    async def main() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # read nothing, answer nothing

        listener = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        store = Store(sqlite_url(tmp_path / "easytask.db"))
        hook = CheckpointWebhook(
            f"http://127.0.0.1:{port}/cp", attempts=2, backoff=0.01, timeout=2, queue=2
        )
        try:
            store.create_schema()
            store.use_audit_key(load_or_create_secret(tmp_path / "audit.key"))
            anchor = AuditAnchor(store, checkpoints.open_log(tmp_path), every=1, webhook=hook)
            await anchor.start()  # the first checkpoint, queued
            for n in range(3):
                store.audit("a", f"event{n}", "cli", {})
                assert await anchor.checkpoint() is not None
            # four written to the file while the receiver held the first POST unanswered
            assert len((tmp_path / "audit.checkpoints").read_text().splitlines()) == 4
            # none was waited for: nothing failed yet but what the full queue dropped
            assert hook.sent == 0 and hook.failed <= 2
            await asyncio.wait_for(hook._queue.join(), 60)
            # one dropped from the full queue; the others tried twice each, then given up
            assert (hook.sent, hook.failed) == (0, 4)
            assert accepted  # it was really called
        finally:
            await anchor.close()
            listener.close()
            for writer in accepted:
                writer.close()
            store.close()

    asyncio.run(main())
