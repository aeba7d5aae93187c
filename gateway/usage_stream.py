"""Token usage for every stream, without changing what a client that didn't ask for it receives.

The call log needs usage for streamed calls, and OpenAI only sends it when the request has
`stream_options.include_usage`. So the gateway asks for it upstream, and for clients that didn't ask,
removes what that adds: one final event whose `choices` is empty, and `"usage":null` in every chunk.
This is the one case where the gateway re-frames a stream: it must see whole SSE events, so it
relays each event once its terminating blank line has arrived (a few bytes of hold-back per chunk).
"""

from __future__ import annotations

import re

__all__ = ["UsageStripper"]

_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null')
_USAGE_ONLY = re.compile(rb'"choices"\s*:\s*\[\s*\]')


class UsageStripper:
    """Feed it the upstream's chunks; relay what it returns.

    >>> s = UsageStripper()
    >>> s.feed(b'data: {"choices":[{"delta":{}}],"usage":null}\\n\\ndata: {"choi')
    b'data: {"choices":[{"delta":{}}]}\\n\\n'
    >>> s.feed(b'ces":[],"usage":{"total_tokens":3}}\\n\\ndata: [DONE]\\n\\n')
    b'data: [DONE]\\n\\n'
    """

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._held = data
            return b""
        complete, self._held = data[: end + 2], data[end + 2 :]
        events = complete.split(b"\n\n")[:-1]
        return b"".join(_NULL_USAGE.sub(b"", event) + b"\n\n" for event in events if not _is_usage_only(event))

    def flush(self) -> bytes:
        """Whatever is held when the stream ends (an unterminated last event), as it came."""
        held, self._held = self._held, b""
        return held


def _is_usage_only(event: bytes) -> bool:
    return b'"usage"' in event and _USAGE_ONLY.search(event) is not None
