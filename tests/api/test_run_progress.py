"""Finished students counted with shared writes: reports that finish together share one $inc."""

from __future__ import annotations

import asyncio

from broadway.run_progress import RunProgress


class Counter:
    """Stands in for RunStore.count_student_done, with a write that takes a while."""

    def __init__(self, n_students: int) -> None:
        self.n_students = n_students
        self.done = 0
        self.writes: list[int] = []
        self.fail = False

    async def count_done(self, run_id: str, finished: int) -> tuple[int, int]:
        await asyncio.sleep(0.01)  # a store round trip, during which more reports arrive
        if self.fail:
            raise ConnectionError("store down")
        self.writes.append(finished)
        self.done += finished
        return self.done, self.n_students


async def test_reports_finishing_together_share_a_write_and_each_sees_its_count() -> None:
    counter = Counter(n_students=20)
    progress = RunProgress(counter.count_done)
    results = await asyncio.gather(*(progress.student_done("run") for _ in range(20)))
    assert sum(counter.writes) == 20 and len(counter.writes) <= 3, counter.writes
    assert max(done for done, _ in results) == 20, "the last write says the run may be done"
    assert all(n == 20 for _, n in results)


async def test_a_failed_write_fails_every_report_it_carried_and_the_next_ones_still_count() -> None:
    counter = Counter(n_students=4)
    progress = RunProgress(counter.count_done)
    counter.fail = True
    outcomes = await asyncio.gather(*(progress.student_done("run") for _ in range(2)), return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    counter.fail = False
    assert await progress.student_done("run") == (1, 4)


async def test_runs_are_counted_apart() -> None:
    counter = Counter(n_students=10)
    progress = RunProgress(counter.count_done)
    await asyncio.gather(progress.student_done("a"), progress.student_done("b"))
    assert counter.writes == [1, 1], "one write per run"
