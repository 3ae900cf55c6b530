"""The grader's main loop: register, keep a heartbeat going, long-poll for jobs, run, report.

Stopping (arq's convention): the first SIGTERM/SIGINT is a warm stop (no new jobs; the running
ones finish and are reported, exit 0); a second is a cold stop (containers killed, nothing
reported, exit 128+signal). Jobs a cold stop abandons go back to the queue through the API's
liveness reaper once the heartbeats stop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from grader import metrics
from grader.client import Backoff, GraderClient, Rejected, SlotsBusy, Unreachable, WorkerUnknown
from grader.config import GraderConfig
from grader.executor import FILES_DIR, Executor, JobOutcome
from grader.image_builder import BUILD_KIND, ImageBuilder
from grader.image_cache import ImageCache, ImageUnavailable
from grader.job_files import FetchError, FileFetcher

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, config: GraderConfig, client: GraderClient, executor: Executor) -> None:
        self.config = config
        self.client = client
        self.executor = executor
        # Docker SDK calls block; they get threads of their own, never the event loop.
        self.threads = ThreadPoolExecutor(max_workers=config.slots + 2, thread_name_prefix="docker")
        self.slots = asyncio.Semaphore(config.slots)
        self.jobs: set[asyncio.Task[None]] = set()
        # Jobs received and not yet reported, named in every heartbeat.
        self.job_ids: set[str] = set()
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self._poll_task: asyncio.Task[Any] | None = None
        self._register_lock = asyncio.Lock()
        self.jobs_done = 0
        self.fetcher = FileFetcher(config.api_url, config.slots)
        # Built grader images a stage names, fetched from the API when missing (LRU-bounded).
        self.images = ImageCache(executor.docker, client, self.threads, config.work_dir, config.image_cache_bytes)
        # --build: image builds the API hands this grader's polls.
        self.builder = (
            ImageBuilder(executor.docker, client, self.threads, config.work_dir, config.build_timeout_s,
                         config.build_memory_bytes)
            if config.build
            else None
        )  # fmt: skip

    async def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(self.threads, self.executor.remove_leftovers)
        if removed:
            log.info("removed %d container(s) left by an earlier run", removed)
        try:
            await self.client.register()
        except Rejected as exc:
            log.error("%s: check the cluster token", exc)
            return 2
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        try:
            await self._poll_loop()
            if self.jobs:
                log.info("waiting for %d running job(s) to finish", len(self.jobs))
                await asyncio.gather(*self.jobs, return_exceptions=True)
        finally:
            heartbeat.cancel()
            self.threads.shutdown(wait=False, cancel_futures=True)
            self.fetcher.close()
            self.images.close()
        log.info("grader stopped after %d job(s)", self.jobs_done)
        return self.exit_code

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """First call: warm stop. Second call: cold stop."""
        if not self.stopping.is_set():
            log.info("%s: finishing running jobs, then stopping (send again to stop now)", _signal_name(signum))
            self.stopping.set()
            if self._poll_task is not None:
                self._poll_task.cancel()
            return
        log.warning("%s: stopping now; killing %d running job(s)", _signal_name(signum), len(self.jobs))
        self.exit_code = 128 + signum
        self.executor.kill_all()
        for task in self.jobs:
            task.cancel()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while not self.stopping.is_set():
            await self.slots.acquire()
            job = None
            try:
                if self.stopping.is_set():
                    break
                if not self.executor.healthy and not await loop.run_in_executor(self.threads, self.executor.ping):
                    # Claiming a job we cannot run would only fail it: wait for Docker instead.
                    delay = backoff.next_delay()
                    log.warning("Docker engine not reachable; not taking jobs, retrying in %.1fs", delay)
                    await self._pause(delay)
                    continue
                self._poll_task = asyncio.ensure_future(self.client.poll(self.config.poll_wait_s))
                job = await self._poll_task
                backoff.reset()
            except asyncio.CancelledError:
                if not self.stopping.is_set():
                    raise
            except Unreachable as exc:
                delay = backoff.next_delay()
                log.warning("API unreachable (%s); retrying in %.1fs", exc, delay)
                await self._pause(delay)
            except WorkerUnknown:
                await self._register_again()
            except SlotsBusy as exc:
                delay = backoff.next_delay()
                log.info("the API counts all slots busy (%s); polling again in %.1fs", exc, delay)
                await self._pause(delay)
            except Rejected as exc:
                delay = backoff.next_delay()
                log.error("%s; retrying in %.1fs", exc, delay)
                await self._pause(delay)
            finally:
                self._poll_task = None
                if job is None:
                    self.slots.release()
            if job is not None:
                task = asyncio.create_task(self._work_slot(job), name=f"slot from job {job.get('job_id')}")
                self.jobs.add(task)
                task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self.jobs.discard(task)
        self.slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("job task failed", exc_info=task.exception())

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when a stop is requested."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _work_slot(self, job: dict[str, Any]) -> None:
        """Run a job, and the next ones its reports bring back, in one slot: while there is work
        each job costs one request (its report, which asks for the next). When a report brings
        none, the slot goes back to the poll loop, which long-polls."""
        next_job: dict[str, Any] | None = job
        while next_job is not None:
            if next_job.get("kind") == BUILD_KIND:
                await self._build(next_job)
                return
            next_job = await self._run_and_report(next_job)

    async def _build(self, job: dict[str, Any]) -> None:
        """An image build in this slot (not named in heartbeats: the API leases builds itself)."""
        if self.builder is None:
            log.error("the API handed an image build to a grader started without --build; not building it")
            return
        outcome = await self.builder.build_and_report(job)
        if outcome.success:
            await self.images.adopt(str(job["build"]["sha"]))

    async def _run_and_report(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """Run one job and report it; returns the next job the report's answer handed this slot."""
        job_id = str(job.get("job_id"))
        self.job_ids.add(job_id)
        metrics.job_started()
        try:
            log.info("job %s: running %d stage(s)", job_id, len(job.get("stages", [])))
            images: list[str] = []
            try:
                images = await self.images.acquire(job)
                outcome = await self._fetch_files(job)
            except ImageUnavailable as exc:
                outcome = JobOutcome(error=f"infrastructure: {exc}")
            try:
                if outcome is None:
                    loop = asyncio.get_running_loop()
                    outcome = await loop.run_in_executor(self.threads, self.executor.run_job, job)
            finally:
                self.images.release(images)
            if self.exit_code:
                return None  # cold stop: the job was killed, its result means nothing
            if outcome.aborted or self.executor.aborted(job_id):
                # The API has already ended it (cancelled) and would refuse the report.
                log.info("job %s was cancelled: its container was killed and it is not reported", job_id)
                metrics.job_aborted()
                return None
            verdict = "succeeded" if outcome.success else f"failed{': ' + outcome.error if outcome.error else ''}"
            log.info("job %s %s", job_id, verdict)
            report = (job_id, outcome.result_json(), outcome.success, job.get("attempt"), outcome.error)
            if self.stopping.is_set() or not self.executor.healthy:
                # Stopping, or Docker in trouble: take no more work (the poll loop checks Docker).
                await self.client.report(*report, kind=job.get("kind"))
                self.jobs_done += 1
                return None
            # wait=0: with nothing queued the slot goes back to the poll loop's long poll at once.
            _, next_job = await self.client.report_and_next(*report, kind=job.get("kind"), wait=0)
            self.jobs_done += 1
            return next_job
        finally:
            self.job_ids.discard(job_id)
            self.executor.forget(job_id)
            metrics.job_ended()

    async def _fetch_files(self, job: dict[str, Any]) -> JobOutcome | None:
        """A single job's files into <job dir>/files; None when there are none or all came, else
        the failed outcome to report (an infrastructure error: not the student's)."""
        if not job.get("files") and not job.get("exercise"):
            return None
        loop = asyncio.get_running_loop()
        job_dir = await loop.run_in_executor(self.threads, self.executor.prepare_job_dir, job)
        try:
            config = self.config
            count = await self.fetcher.fetch_all(
                job, job_dir / FILES_DIR, self.client.worker_id, config.max_files_bytes, config.files_timeout_s
            )
        except (FetchError, OSError) as exc:
            await loop.run_in_executor(self.threads, self.executor.remove_job_dir, job)
            return JobOutcome(error=f"infrastructure: {exc}")
        log.debug("job %s: fetched %d bytes of files", job.get("job_id"), count)
        return None

    async def _heartbeat_loop(self) -> None:
        while True:
            registration = self.client.registration
            interval = registration.heartbeat_s if registration else 10.0
            await asyncio.sleep(interval)
            try:
                abort = await self.client.heartbeat(sorted(self.job_ids))
                if abort:
                    await self._abort(abort)
            except Unreachable as exc:
                log.warning("heartbeat not delivered: %s", exc)
            except WorkerUnknown:
                await self._register_again()
            except Rejected as exc:
                log.error("%s", exc)

    async def _abort(self, job_ids: list[str]) -> None:
        """Jobs the API cancelled while they ran: kill their containers now, run nothing more of them."""
        for job_id in job_ids:
            if job_id not in self.job_ids:
                continue
            # Not on the stage threads, which are all busy running stages when every slot is.
            killed = await asyncio.to_thread(self.executor.abort, job_id)
            log.info("job %s was cancelled by the API: killed %d container(s)", job_id, killed)

    async def _register_again(self) -> None:
        """The API no longer knows us (declared dead, or its store was reset): join again.

        Jobs still running under the old id finish; their reports are refused (409), since the
        API has already given those jobs to someone else.
        """
        stale = self.client.registration
        async with self._register_lock:
            if self.client.registration is not stale:
                return  # the other loop has just registered again
            log.warning("the API does not know this worker any more; registering again")
            try:
                await self.client.register()
            except Rejected as exc:
                log.error("%s: check the cluster token", exc)
                await self._pause(self.config.backoff_max_s)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
