"""An incremental Server-Sent Events decoder: bytes in as the network delivers them, (id, data) events out.

It follows the WHATWG rules the SDK needs (`id:`, multi-line `data:`, comments, CR/LF/CRLF line ends, one
optional space after the colon) and ignores `event:` and `retry:`, which the gateway does not send. It works on
whole chunks rather than line by line because a gateway batch of many tokens arrives in one read.
"""

from __future__ import annotations


class SSEDecoder:
    """Feed it chunks; it returns the events they complete and keeps the unfinished tail for the next chunk."""

    __slots__ = ("_buffer", "_last_id", "_pending_cr")

    def __init__(self) -> None:
        self._buffer = b""
        self._last_id = ""
        self._pending_cr = False

    @property
    def last_event_id(self) -> str:
        """The last `id:` seen, which SSE carries over to every later event that names none."""
        return self._last_id

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """The (event id, data) of each event `chunk` completes, in order."""
        if b"\r" in chunk or self._pending_cr:
            chunk = self._normalise(chunk)
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\n\n" not in buffer:
            self._buffer = buffer
            return []
        *blocks, self._buffer = buffer.split(b"\n\n")
        events = []
        for block in blocks:
            event = self._parse(block)
            if event is not None:
                events.append(event)
        return events

    def _normalise(self, chunk: bytes) -> bytes:
        if self._pending_cr:  # the previous chunk ended in CR: a LF starting this one belongs to it
            chunk = chunk[1:] if chunk.startswith(b"\n") else chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            self._pending_cr = True
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _parse(self, block: bytes) -> tuple[str, str] | None:
        if block[:4] == b"id: ":  # the gateway's own shape, "id: <id>\ndata: <json>": one cheap pass
            end = block.find(b"\n")
            if end > 0 and block[end + 1 : end + 7] == b"data: " and block.find(b"\n", end + 1) < 0:
                self._last_id = block[4:end].decode("utf-8", errors="replace")
                return self._last_id, block[end + 7 :].decode("utf-8", errors="replace")
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if not line or line[0] == 58:  # empty, or ":" starts a comment (the gateway's keep-alive)
                continue
            name, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"id" and b"\0" not in value:
                self._last_id = value.decode("utf-8", errors="replace")
        if not data:
            return None
        return self._last_id, b"\n".join(data).decode("utf-8", errors="replace")
