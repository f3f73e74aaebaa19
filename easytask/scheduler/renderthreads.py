"""The render threads: a playbook job's templates (its runs' actions and `when`, a loop's items,
the secrets to mask, failed_when/changed_when) render there through `off_loop`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

# Templates render in these threads, never on the event loop: a render's work is bounded
# (easytask.templating: steps, output, time) but may take up to its time limit.
_RENDER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="easytask-render")


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a call that renders templates in the render threads."""
    return await asyncio.get_running_loop().run_in_executor(_RENDER, partial(fn, *args))
