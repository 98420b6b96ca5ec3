"""Sleeping in a background loop without delaying shutdown."""

from __future__ import annotations

import asyncio


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, but return at once when ``stopping`` is set."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
