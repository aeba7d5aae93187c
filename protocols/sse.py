"""Server-sent events decoded incrementally, for the translators that read an upstream's stream. Pure.

>>> events = SSEData()
>>> events.feed(b'data: {"a": 1}\\n'), events.feed(b'\\n')
([], [b'{"a": 1}'])
"""

from __future__ import annotations

import re

__all__ = ["SSEData"]

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEData:
    """Server-sent events decoded incrementally: the `data` of each event once its blank line arrives."""

    def __init__(self) -> None:
        self._pending = b""  # the current, unterminated line
        self._data: list[bytes] = []  # data lines of the current event

    def feed(self, chunk: bytes) -> list[bytes]:
        text = self._pending + chunk
        # A final CR may be the first half of CRLF: keep it until the next byte says.
        cut = len(text) - 1 if text.endswith(b"\r") else len(text)
        lines = _LINE_END.split(text[:cut])
        self._pending = lines.pop() + text[cut:]
        complete = []
        for line in lines:
            if not line and self._data:
                complete.append(b"\n".join(self._data))
                self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            # `event:` lines repeat the data's own "type"; `id:`, `retry:` and comments mean nothing here.
        return complete

    def close(self) -> list[bytes]:
        """Events completed by a held final CR (in a stream whose lines end with a CR alone)."""
        return self.feed(b"\n") if self._pending.endswith(b"\r") else []
