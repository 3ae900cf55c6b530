"""The keys queued jobs sort by, and the ranges that select one course's queue.

A job is queued exactly while it carries `queue_key`; every claim reads one range of that one
sparse-indexed field (docs/store-notes.md: nx-27017 answers a range on one indexed key from the
index, and scans for a filter on one field sorted by another). So everything the order needs is
in the key itself:

    c:<course>/<class><priority><rank><queued at, ns><job id>

- the course first, so that one course's queue is a prefix range (the fair-share claim picks the
  course, then takes the first job of its range);
- class: pre/post-processing jobs (they gate a whole run), then requeued jobs (they have waited
  once already), then fresh ones;
- priority, higher first (a single submission's `priority`; a run's students have 0);
- rank: Orca's collation. A job's rank is how many jobs of the same user (or team) were already
  queued in its course when it was queued, so one student's tenth resubmission waits behind
  other students' first ones instead of ahead of them;
- then oldest first.

Course names are letters, digits, '_', '.' and '-' (broadway/courses.py), never '/', and no
character sorts between '/' and '0': the range [c:<name>/, c:<name>0) holds exactly that
course's keys, whatever other names share its prefix.
"""

from __future__ import annotations

import time

from bson import ObjectId

COURSE_MARK = "c:"
PRIORITY_PIPELINE = "0"
PRIORITY_REQUEUED = "1"
PRIORITY_FRESH = "2"
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
MAX_RANK = 999_999


def course_prefix(course: str) -> str:
    return f"{COURSE_MARK}{course}/"


def course_range(course: str) -> dict[str, str]:
    """The filter matching every queued job of one course, and no other's."""
    return {"$gte": course_prefix(course), "$lt": f"{COURSE_MARK}{course}0"}


def course_of_key(key: str) -> str | None:
    """The course a queue key belongs to (None for a key from before courses)."""
    if not key.startswith(COURSE_MARK) or "/" not in key:
        return None
    return key[len(COURSE_MARK) : key.index("/")]


def queue_key(course: str, job_class: str, job_id: ObjectId | str | None = None) -> str:
    """A pre/post-processing or requeued job's key: its class, then queue time."""
    return f"{course_prefix(course)}{job_class}{MAX_PRIORITY:04d}{0:06d}{time.time_ns():020d}{job_id or ''}"


def fresh_key(course: str, priority: int = 0, job_id: ObjectId | str | None = None, rank: int = 0) -> str:
    """The key of a job queued for the first time: higher `priority` first, then lower `rank`."""
    order = f"{MAX_PRIORITY - priority:04d}{min(max(rank, 0), MAX_RANK):06d}"
    return f"{course_prefix(course)}{PRIORITY_FRESH}{order}{time.time_ns():020d}{job_id or ''}"


def tail_of(key: str) -> str:
    """What follows the course in a key: class, priority, rank and age, comparable across courses."""
    return key[key.index("/") + 1 :] if "/" in key else key
