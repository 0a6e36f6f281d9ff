"""Stop strings, matched on the detokenized text across token boundaries.

Text that could still be the start of a stop string is held back, so a stop
string never leaks into the output, however the tokenizer splits it.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string ended the output)."""
        buffer = self._pending + text
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._pending = ""
            return buffer[: min(hits)], True
        cut = max(len(buffer) - self._hold, 0)
        self._pending = buffer[cut:]
        return buffer[:cut], False

    def flush(self) -> str:
        """The held-back text, once the output ended without a stop string."""
        pending, self._pending = self._pending, ""
        return pending
