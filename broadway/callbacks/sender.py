"""One delivery attempt: a signed JSON POST, and what its outcome means for the next one.

Outcomes:
- 2xx: delivered.
- 410 Gone, and every other 4xx except 408, 425 and 429: given up. The receiver has understood
  the request and refuses it (unknown work, bad signature because the secret differs...), and
  sending it again would get the same answer.
- everything else is retried: 5xx, 408/425/429 (the receiver asks to come back), timeouts,
  refused or reset connections, TLS failures, and 3xx. Redirects are never followed (a redirect
  could point the signed body anywhere, past the target checks); a 3xx means "not delivered", and
  since a moved endpoint is usually fixed by its operator, retrying until the callback's max age
  gives them the chance to fix it, rather than dropping the result at once.
- a target refused by the address checks (link-local, metadata, outside the allowed networks,
  also after DNS) is given up without any connection being made.

Log lines and recorded errors name the host only, never the URL's path or query (they may carry
a token), the secret or the signature.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from broadway.callbacks.signing import DELIVERY_HEADER, SIGNATURE_HEADER, sign
from broadway.callbacks.targets import CallbackTargetError, CheckedResolver, TargetPolicy, check_callback_url

USER_AGENT = "Broadway-Callbacks/1"
DEFAULT_TIMEOUT_S = 10.0
RETRY_4XX = frozenset({408, 425, 429})


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    status_code: int | None
    error: str | None
    duration_s: float


def classify(status_code: int) -> Outcome:
    """What an HTTP answer means for the delivery (see the module docstring)."""
    if 200 <= status_code < 300:
        return Outcome.DELIVERED
    if 400 <= status_code < 500 and status_code not in RETRY_4XX:
        return Outcome.GIVE_UP
    return Outcome.RETRY


class CallbackSender:
    """Sends callbacks through its own HTTP client, whose resolver enforces the target policy."""

    def __init__(self, secret: str, policy: TargetPolicy, timeout_s: float = DEFAULT_TIMEOUT_S, max_clients: int = 8):
        self.secret = secret
        self.policy = policy
        self.timeout_s = timeout_s
        self._resolver = CheckedResolver(policy=policy)
        # force_instance: not the process-wide shared client, whose resolver is unchecked.
        self._client: AsyncHTTPClient = SimpleAsyncHTTPClient(
            force_instance=True, resolver=self._resolver, max_clients=max_clients
        )

    async def send(
        self, url: str, body: bytes, delivery_id: str, attempt: int, secret: str | None = None
    ) -> AttemptResult:
        """POST `body` to `url` once, signed with `secret` (a course's own) or else the
        deployment's; never raises for anything the network or receiver does."""
        started = time.monotonic()
        try:
            check_callback_url(url, self.policy)
        except CallbackTargetError as e:
            return AttemptResult(Outcome.GIVE_UP, None, str(e), 0.0)
        request = HTTPRequest(
            url,
            method="POST",
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                DELIVERY_HEADER: delivery_id,
                "Broadway-Delivery-Attempt": str(attempt),
                SIGNATURE_HEADER: sign(secret or self.secret, body),
            },
            follow_redirects=False,
            connect_timeout=self.timeout_s,
            request_timeout=self.timeout_s,
            # The answer's body is of no interest; discarding it bounds memory whatever its size.
            streaming_callback=lambda chunk: None,
            decompress_response=False,
        )
        try:
            response = await self._client.fetch(request, raise_error=False)
        except CallbackTargetError as e:  # raised by the resolver: nothing was connected to
            return AttemptResult(Outcome.GIVE_UP, None, str(e), time.monotonic() - started)
        except HTTPClientError as e:  # 599: timeout, or the connection closed mid-answer
            return AttemptResult(Outcome.RETRY, None, _describe(e), time.monotonic() - started)
        except OSError as e:  # refused, reset, unreachable, TLS
            return AttemptResult(Outcome.RETRY, None, _describe(e), time.monotonic() - started)
        duration = time.monotonic() - started
        outcome = classify(response.code)
        error = None if outcome is Outcome.DELIVERED else f"HTTP {response.code}"
        if 300 <= response.code < 400:
            error = f"HTTP {response.code} (redirects are not followed)"
        return AttemptResult(outcome, response.code, error, duration)

    def close(self) -> None:
        self._client.close()
        self._resolver.close()


def _describe(e: BaseException) -> str:
    # Exception texts from the client and the socket layer name no URL; keep them short.
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:300]
