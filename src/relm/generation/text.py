"""Token ids -> text deltas as they are generated, with stop strings: a small stateful helper.

Decoding token by token is wrong for byte-level BPE (a character may span tokens), so the text is
always the decode of all new ids, and a delta is what it adds. A delta is held back while the text ends
in an incomplete character (U+FFFD) or in a prefix of a stop string, so no stop string ever reaches the
caller and no text is retracted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()):
        self.decode, self.stop = decode, tuple(stop)
        self.ids: list[int] = []
        self.sent = 0  # characters of the text already given out
        self.stopped = False

    def text(self) -> str:
        """The whole text so far, cut before the first stop string."""
        text = self.decode(self.ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        return text if cut < 0 else text[:cut]

    def push(self, token_id: int) -> str:
        """Add a token; the delta that can be given out now (sets `stopped` when a stop string appears)."""
        self.ids.append(int(token_id))
        full = self.decode(self.ids)
        text = self.text()
        if len(text) < len(full):
            self.stopped = True
            return self._emit(text)
        safe = len(text)
        if text.endswith("\ufffd"):
            safe = len(text.rstrip("\ufffd"))
        for s in self.stop:  # hold back a tail that could start a stop string
            for n in range(min(len(s) - 1, safe), 0, -1):
                if text[:safe].endswith(s[:n]):
                    safe -= n
                    break
        return self._emit(text[:max(safe, self.sent)])

    def finish(self) -> str:
        """The rest of the text (what was held back), at the end of generation."""
        return self._emit(self.text())

    def _emit(self, text: str) -> str:
        delta = text[self.sent:]
        self.sent = max(self.sent, len(text))
        return delta
