"""Callbacks to LMSs when a job or grading run ends: durable, signed, retried, safe.

How the parts fit (and how the lifecycle uses them):

1. Submission: a handler checks a `callback_url` with
   `targets.check_callback_url(url, TargetPolicy.from_strings(config.callback_allow_networks))`
   (raises CallbackTargetError with a message fit for a 400) and stores it on the job or run
   document as `callback_url`.
2. The update that makes that document terminal also `$set`s
   `store.deliveries.pending_delivery_fields(now, config.callback_max_age_s)` (merge it only
   when the document has a callback_url), so no crash can separate the end from its callback.
   For a job the body comes from the document's `status`, `work_id`, `grade`, `comments` and
   `error` fields (bodies.py), so that same update should set `grade`/`comments` from the result.
3. After that update, the process calls `Deliverer.notify()` (Services.deliverer) so the
   callback leaves within milliseconds rather than at the next scan (0.5 s).
4. The deliverer of any API process claims, signs (signing.py), sends (sender.py) and records it.
   `Store.deliveries.attempts_for(job_id)` lists the attempts for GET /api/v1/job/{id}/deliveries;
   `Store.deliveries.delivery_state(kind, id)` gives the delivery's id and state for status answers.
"""

from __future__ import annotations

from broadway.callbacks.deliverer import DEFAULT_SCAN_INTERVAL_S, RETRY_BASE_S, Deliverer
from broadway.callbacks.sender import DEFAULT_TIMEOUT_S, CallbackSender
from broadway.callbacks.signing import sign, verify
from broadway.callbacks.targets import CallbackTargetError, TargetPolicy, check_callback_url
from broadway.store.deliveries import DeliveryStore

__all__ = [
    "CallbackSender",
    "CallbackTargetError",
    "Deliverer",
    "TargetPolicy",
    "check_callback_url",
    "make_deliverer",
    "sign",
    "verify",
]


def make_deliverer(
    store: DeliveryStore,
    secret: str,
    allow_networks: tuple[str, ...],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retry_base_s: float = RETRY_BASE_S,
    scan_interval_s: float = DEFAULT_SCAN_INTERVAL_S,
) -> Deliverer:
    """A Deliverer over the store's outbox, signing with `secret`, limited to `allow_networks`
    (Config.callback_allow_networks); tests shorten the timings."""
    sender = CallbackSender(secret, TargetPolicy.from_strings(allow_networks), timeout_s=timeout_s)
    return Deliverer(store, sender, scan_interval_s=scan_interval_s, retry_base_s=retry_base_s)
