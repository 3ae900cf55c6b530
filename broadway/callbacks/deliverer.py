"""The deliverer: one asyncio task per API process that sends due callbacks from the outbox.

It claims due deliveries (broadway/store/deliveries.py) up to `concurrency` at a time, sends
each (sender.py), logs the attempt and then marks it delivered, given up, or due again after a
backoff. It wakes at once on `notify()` (call it after this process makes a document terminal
with a pending delivery) and otherwise scans every `scan_interval_s`, which is how it picks up
deliveries recorded by other API processes, retries that come due, and leases that ran out
because their claimant died. Store outages are logged and waited out; nothing here blocks the
event loop.

Guarantees: at-least-once. A delivery is only cleared after a receiver's 2xx (or a give-up), so
a process killed at any point loses nothing; one killed after the receiver answered but before
the store heard of it has the delivery re-sent, with the same Broadway-Delivery id, once its
lease (default 30 s, over the 10 s send timeout) runs out.

Retries: the n-th retry waits min(10 min, retry_base_s * 2**(n-1)), drawn uniformly from the
upper half of that ("equal jitter", so that receivers coming back are not hit by every sender
at once); a delivery whose next attempt would fall past its `expires` is given up instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from broadway import metrics
from broadway.callbacks.bodies import encode, job_body, run_body
from broadway.callbacks.sender import AttemptResult, CallbackSender, Outcome
from broadway.callbacks.targets import host_for_log
from broadway.store.connection import is_store_failure
from broadway.store.deliveries import ClaimedDelivery, DeliveryStore
from broadway.store.images import build_result_body

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8
DEFAULT_SCAN_INTERVAL_S = 0.5
RETRY_BASE_S = 1.0
RETRY_CAP_S = 600.0
# The longest stop() waits for a task it cancelled.
STOP_TIMEOUT_S = 5.0


def retry_delay(attempt: int, base_s: float = RETRY_BASE_S, cap_s: float = RETRY_CAP_S) -> float:
    """Seconds to wait after failed attempt number `attempt` (1, 2, ...)."""
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 60))
    return ceiling / 2.0 + random.uniform(0.0, ceiling / 2.0)


class Deliverer:
    def __init__(
        self,
        store: DeliveryStore,
        sender: CallbackSender,
        concurrency: int = DEFAULT_CONCURRENCY,
        scan_interval_s: float = DEFAULT_SCAN_INTERVAL_S,
        lease_s: float | None = None,
        retry_base_s: float = RETRY_BASE_S,
        retry_cap_s: float = RETRY_CAP_S,
        clock: Callable[[], float] = time.time,
        secret_for: Callable[[str, str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.concurrency = concurrency
        self.scan_interval_s = scan_interval_s
        # Longer than a send can take (its timeout) plus the store writes after it.
        self.lease_s = lease_s if lease_s is not None else max(30.0, 3.0 * sender.timeout_s)
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.clock = clock
        # (kind, owner id) -> the owner course's own callback secret, or None for the deployment's:
        # each course's receivers verify only its signatures (store/courses.py callback_secret_for).
        self.secret_for = secret_for
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._store_down = False
        self._stopping = False

    def start(self) -> None:
        """Start the loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="callback-deliverer")

    def notify(self) -> None:
        """A delivery was just recorded: look now rather than at the next scan."""
        self._wake.set()

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop claiming; give sends in flight `grace_s` to finish, then cancel them (their
        leases run out and another process, or this one restarted, sends them again)."""
        # The flag as well as the cancel: a cancel that lands inside a store call can be
        # swallowed by the driver, and the loop must end anyway (it checks the flag each turn).
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)
            self._task = None
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=STOP_TIMEOUT_S)
        self.sender.close()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                while len(self._inflight) < self.concurrency and not self._stopping:
                    claimed = await self.store.claim_due(self.clock(), self.lease_s)
                    if claimed is None:
                        break
                    task = asyncio.create_task(self._deliver(claimed))
                    self._inflight.add(task)
                    task.add_done_callback(self._done)
                if self._store_down:
                    log.info("callbacks: the store is reachable again")
                    self._store_down = False
            except Exception as e:
                if not is_store_failure(e):
                    log.exception("callbacks: claiming failed; retrying")
                elif not self._store_down:
                    log.warning("callbacks: store unavailable (%s); retrying", e)
                self._store_down = self._store_down or is_store_failure(e)
            # A timer rather than asyncio.wait_for: on Python 3.11, cancelling a wait_for whose
            # inner wait is completing at that moment can leave the task stuck (seen at stop).
            timer = asyncio.get_running_loop().call_later(self.scan_interval_s, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()  # a free slot: claim the next due delivery now

    async def _deliver(self, claimed: ClaimedDelivery) -> None:
        what = f"{claimed.kind} {claimed.owner_id}"
        try:
            await self._attempt(claimed, what)
        except Exception as e:
            if is_store_failure(e):
                # The lease runs out and the delivery is tried again; nothing is lost.
                log.warning("callbacks: %s: store unavailable while recording the attempt (%s)", what, e)
            else:
                log.exception("callbacks: %s: delivery failed unexpectedly; it will be retried", what)

    async def _attempt(self, claimed: ClaimedDelivery, what: str) -> None:
        now = self.clock()
        if claimed.url is None:
            await self.store.mark_given_up(claimed, now, "no callback_url")
            log.warning("callbacks: %s has a pending delivery but no callback_url; given up", what)
            return
        host = host_for_log(claimed.url)
        if now > claimed.expires:
            # A retry that came due in time can be claimed after its expiry on a busy process:
            # the reason still says what the attempts before it got.
            earlier = await self.store.attempts_for(claimed.owner_id) if claimed.attempt > 1 else []
            reason = "expired before it could be sent"
            if earlier:
                reason = f"expired after {len(earlier)} attempts; last: {earlier[-1].error}"
            await self.store.mark_given_up(claimed, now, reason)
            log.warning("callbacks: %s to %s given up: %s", what, host, reason)
            return
        new_body = None
        body = claimed.body
        if body is None:
            body = new_body = await self._build_body(claimed)
        secret = await self.secret_for(claimed.kind, claimed.owner_id) if self.secret_for else None
        result = await self.sender.send(claimed.url, body.encode(), claimed.delivery_id, claimed.attempt, secret)
        metrics.callback_attempt(result.outcome.value, result.duration_s)
        at = self.clock()
        await self.store.record_attempt(
            claimed, at, result.duration_s, result.outcome.value, result.status_code, result.error
        )
        await self._settle(claimed, result, at, new_body, what, host)

    async def _settle(
        self, claimed: ClaimedDelivery, result: AttemptResult, at: float, body: str | None, what: str, host: str
    ) -> None:
        n = claimed.attempt
        if result.outcome is Outcome.DELIVERED:
            kept = await self.store.mark_delivered(claimed, at, body)
            log.info("callbacks: %s delivered to %s (attempt %d, HTTP %s, %.0f ms)",
                     what, host, n, result.status_code, 1000 * result.duration_s)  # fmt: skip
        elif result.outcome is Outcome.GIVE_UP:
            kept = await self.store.mark_given_up(claimed, at, result.error or "refused", body)
            log.warning("callbacks: %s to %s given up after attempt %d: %s", what, host, n, result.error)
        else:
            due = at + retry_delay(n, self.retry_base_s, self.retry_cap_s)
            if due > claimed.expires:
                reason = f"expired after {n} attempts; last: {result.error}"
                kept = await self.store.mark_given_up(claimed, at, reason, body)
                log.warning("callbacks: %s to %s given up: %s", what, host, reason)
            else:
                kept = await self.store.schedule_retry(claimed, due, body)
                log.info("callbacks: %s to %s not delivered (attempt %d: %s); retrying in %.1fs",
                         what, host, n, result.error, due - at)  # fmt: skip
        if not kept:
            # Our lease ran out mid-send and another process claimed it: theirs is the record.
            log.warning("callbacks: %s: the claim was lost during attempt %d; the new claimant decides", what, n)

    async def _build_body(self, claimed: ClaimedDelivery) -> str:
        if claimed.kind == "image":  # frozen by the update that ended the build; this is the same body
            document = claimed.document
            return build_result_body(claimed.owner_id, document.get("status") == "succeeded", document.get("error"))
        if claimed.kind == "run":
            counts = await self.store.run_counts(claimed.owner_id)
            return encode(run_body(claimed.document, counts))
        return encode(job_body(claimed.document))
