"""Waking long-polling graders when jobs are queued.

Jobs queued by this process wake its pollers at once. Jobs queued by another API process on
the same store are found by each waiting poller re-checking the store every
`poll_recheck_interval` seconds, so nothing depends on one process seeing every change.
"""

from __future__ import annotations

import asyncio


class JobSignal:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake every poller waiting now; the next waiters wait for the next notify."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, seconds: float) -> bool:
        """True if woken by notify() within that many seconds."""
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
            return True
        except TimeoutError:
            return False
