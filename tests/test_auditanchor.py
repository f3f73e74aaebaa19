"""Audit checkpoints: written as the chain grows, signed, and checked with the chain."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from easytask.scheduler.auditanchor import AuditAnchor
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
