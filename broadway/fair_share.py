"""Weighted fair share among courses: which course's queue the next claim reads first.

Among the courses with queued jobs, the one furthest below its share goes first: the fewest
running jobs per unit of weight. Ties go to the course whose first queued job comes first by
class, priority, collation rank and age (the tail of its queue key). Store-free: the numbers
come from broadway/store/course_shares.py.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_WEIGHT = 1.0


@dataclass(frozen=True)
class CourseQueue:
    """What the claim knows of one course with queued jobs."""

    course: str
    running: int
    weight: float
    # Its first queued job's key without the course (see broadway/store/queue_keys.py).
    head: str


def share_order(queues: list[CourseQueue]) -> list[str]:
    """Courses in the order a claim should try them."""

    def standing(queue: CourseQueue) -> tuple[float, str]:
        weight = queue.weight if queue.weight > 0 else DEFAULT_WEIGHT
        return (queue.running / weight, queue.head)

    return [queue.course for queue in sorted(queues, key=standing)]
