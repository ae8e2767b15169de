"""A one-shot signal actor that other calls wait on (the pattern Ray's own tests use).

Shared by the async-actor and generator tests; a module of its own so that workers
import it by name like any user module.
"""

from __future__ import annotations

import asyncio

import heliostat as hs

__all__ = ["Signal"]


@hs.remote
class Signal:
    """``wait()`` returns once some caller has called ``send()``."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def wait(self) -> bool:
        await self.event.wait()
        return True

    def send(self) -> None:
        self.event.set()
