"""The holding pen: Orca jobs waiting for their grader image, and jobs waiting for their release time.

A job naming an image that is still being built is stored held (broadway/store/orca_jobs.py);
when the build ends the image handlers call build_finished: a success queues every held job at
once (and wakes the pollers), a failure fails them, each LMS told through its callback. Jobs
with a release delay (Orca's `priority`) are queued by release_due, which the API runs every
second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from broadway.store import Store
from broadway.store.orca_jobs import OrcaJobStore

log = logging.getLogger(__name__)


class HoldingPen:
    def __init__(
        self,
        store: Store,
        callback_max_age_s: float,
        on_jobs_queued: Callable[[], None],
        on_callback_due: Callable[[], None] = lambda: None,
    ) -> None:
        self.jobs = OrcaJobStore(store.db, store.jobs.shares)
        self.callback_max_age_s = callback_max_age_s
        self.on_jobs_queued = on_jobs_queued
        # Pointed at the deliverer's notify once it runs (as the scheduler's).
        self.on_callback_due = on_callback_due

    async def build_finished(self, sha: str, succeeded: bool, error: str | None) -> None:
        """The build of `sha` ended: release its held jobs, or fail them saying why."""
        if succeeded:
            released = await self.jobs.release_built(sha)
            if released:
                log.info("grader image %s built: %d held job(s) queued", sha[:12], released)
                self.on_jobs_queued()
            return
        reason = f"the grader image {sha} could not be built: {error or 'the build failed'}"
        failed = await self.jobs.fail_held(sha, reason, self.callback_max_age_s)
        if failed:
            log.info("grader image %s failed to build: %d held job(s) failed", sha[:12], len(failed))
            self.on_callback_due()

    async def release_due(self) -> None:
        """Queue the jobs whose release time has come."""
        if await self.jobs.release_due(time.time()):
            self.on_jobs_queued()
