"""Counting a run's finished students with fewer store writes: concurrent reports share one.

Every student job's report used to make its own `$inc` on the run (the third store operation of
each job). Reports that finish while a count is being written now wait for the next write and
share it (a group commit): with 16 graders reporting, one `$inc` of n serves n reports. Each
report still waits for the write that counts it, so "reported" never comes before the run
could see it; a crash loses nothing the reaper's recovery sweep does not recount.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# (run id, how many more finished) -> (students done, students in the run)
CountDone = Callable[[str, int], Awaitable[tuple[int, int]]]


@dataclass
class _Pending:
    count: int = 0
    waiters: list[asyncio.Future[tuple[int, int]]] = field(default_factory=list)


class RunProgress:
    def __init__(self, count_done: CountDone) -> None:
        self.count_done = count_done
        self._pending: dict[str, _Pending] = {}
        self._writing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # referenced until done (the loop keeps weak ones)

    async def student_done(self, run_id: str) -> tuple[int, int]:
        """Count one finished student of the run; (students done, students in the run) after
        the write that counted it."""
        pending = self._pending.setdefault(run_id, _Pending())
        pending.count += 1
        waiter: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        pending.waiters.append(waiter)
        if run_id not in self._writing:
            self._writing.add(run_id)
            task = asyncio.create_task(self._write(run_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await waiter

    async def _write(self, run_id: str) -> None:
        # One write at a time per run; what arrives meanwhile goes in the next one.
        try:
            while (pending := self._pending.pop(run_id, None)) is not None:
                try:
                    totals = await self.count_done(run_id, pending.count)
                except Exception as e:  # the store is down: each report answers as before (503)
                    for waiter in pending.waiters:
                        if not waiter.done():
                            waiter.set_exception(e)
                    continue
                except BaseException:
                    for waiter in pending.waiters:
                        waiter.cancel()
                    raise
                for waiter in pending.waiters:
                    if not waiter.done():
                        waiter.set_result(totals)
        finally:
            self._writing.discard(run_id)
