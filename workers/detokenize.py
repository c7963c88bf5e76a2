"""Turning generated token ids into text one token at a time, without ever emitting half a character.

Byte-level tokenizers can split one UTF-8 character across tokens; decoding such a token alone yields
"\ufffd". The decoder holds those tokens back (emitting "") until the character completes. It decodes a
short window (a few tokens before the new ones) rather than the whole output, so each step costs O(1), and
the window keeps the spacing that tokenizers derive from the previous token.
"""

from collections.abc import Callable, Sequence

REPLACEMENT_CHARACTER = "\ufffd"
_CONTEXT_TOKENS = 5
"""How many already-emitted tokens are decoded again as context for the new ones."""

Decode = Callable[[Sequence[int]], str]


class IncrementalDecoder:
    """Feeds token ids in order; `push` returns the text that became final with that token."""

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the context window
        self._read_offset = 0  # first id whose text has not been emitted

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if full_text.endswith(REPLACEMENT_CHARACTER) or len(full_text) <= len(prefix_text):
            return ""
        new_text = full_text[len(prefix_text) :]
        self._read_offset = len(self._ids)
        self._prefix_offset = max(0, self._read_offset - _CONTEXT_TOKENS)
        return new_text
