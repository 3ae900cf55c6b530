"""A course's `max_queued`: the most jobs it may have waiting in the queue at once.

Checked before a submission stores anything (a single job) or queues anything (a run's start),
against the store's own count, so that it holds across API processes. Two submissions racing
for the last places may both pass: the ceiling can be passed by the few requests in flight at
that moment, never by a run's size.
"""

from __future__ import annotations

from broadway.courses import DEFAULT_COURSE
from broadway.handlers.base import ApiError, APIHandler

# What a client told "the queue is full" is asked to wait before trying again.
QUEUE_FULL_RETRY_S = 5


async def admit_queued(handler: APIHandler, course_name: str, adding: int) -> None:
    """400 if `adding` jobs can never fit under the course's max_queued; 429 with Retry-After
    while the jobs already queued leave no room for them."""
    if course_name == DEFAULT_COURSE:
        return
    course = await handler.services.courses.get(course_name)
    if course is None or course.max_queued is None:
        return
    if adding > course.max_queued:
        raise ApiError(
            400,
            f"course {course_name} may have at most {course.max_queued} queued jobs; this adds {adding} at once "
            "(raise the course's max_queued, or submit fewer students)",
        )
    queued = await handler.services.store.jobs.queued_in(course_name)
    if queued + adding > course.max_queued:
        raise ApiError(
            429,
            f"course {course_name} has {queued} queued jobs of at most {course.max_queued}: "
            f"try again in {QUEUE_FULL_RETRY_S} s",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_S)},
        )
