"""A stage's captured output: the tail is kept, the rest counted, so a flood never fills memory."""

from __future__ import annotations


class OutputTail:
    def __init__(self, cap: int) -> None:
        self.cap = max(cap, 0)
        self.total = 0
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._buffer += chunk
        # Trim in batches: deleting from the front on every chunk would copy the buffer each time.
        if len(self._buffer) > 2 * self.cap + 65536:
            del self._buffer[: len(self._buffer) - self.cap]

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def raw(self) -> bytes:
        """The kept bytes (all of them while not truncated)."""
        return bytes(self._buffer[-self.cap :]) if self.cap else b""

    def text(self) -> str:
        kept = bytes(self._buffer[-self.cap :]) if self.cap else b""
        body = kept.decode("utf-8", "replace")
        if self.truncated:
            dropped = self.total - len(kept)
            return f"[output truncated: first {dropped} of {self.total} bytes dropped]\n{body}"
        return body
