"""Stop sequences: ending a generation when its text contains one, without the stop text ever reaching the client.

A stop string may span several tokens, so text is streamed through a `StopMatcher` that holds back only the
longest tail that is still the beginning of some stop string: any text that can no longer become part of a
stop is released at once. When a stop string appears, the text before it is released and the rest (the stop
and anything after it in the same token) is dropped. Matching is over decoded text, not token ids, so a stop
is found whatever way the tokenizer happened to split it.
"""

from collections.abc import Sequence


class StopMatcher:
    """Feed each token's text in order; `feed` returns the text the client may see now."""

    __slots__ = ("_stops", "_held", "stopped")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""
        self.stopped = False
        """True once a stop string was found; everything fed after that is dropped."""

    @property
    def held(self) -> str:
        """Text held back because it could still turn out to be the start of a stop string."""
        return self._held

    def feed(self, text: str, *, final: bool = False) -> str:
        """The text releasable after `text`; `final` (the last token of the generation) releases all held text."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        first = min((i for i in (buffer.find(stop) for stop in self._stops) if i >= 0), default=-1)
        if first >= 0:
            self.stopped = True
            self._held = ""
            return buffer[:first]
        keep = 0 if final else _longest_partial_stop(buffer, self._stops)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Release what is held (the generation ended without completing a stop string)."""
        held, self._held = ("" if self.stopped else self._held), ""
        return held


def _longest_partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """The length of the longest suffix of `text` that is a proper prefix of one of `stops`."""
    best = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:length]):
                best = length
                break
    return best
