"""The shape checks a request body passes before anything else reads it: nesting depth and duplicate keys.

Both guard what comes after the gateway. A body nested hundreds of levels deep parses, but every
recursive reader behind us (redaction, the upstream's own parser, a dataset export) pays for it or
fails; we refuse it at the door with a limit the client can read. Duplicate top-level keys are worse:
orjson keeps the last `"model"` while an upstream parser may keep the first, so a client could route by
one value and run another. Clients never send either on purpose.

One pass does both: the body is split at its quotes (C speed) and the pieces inside strings are
dropped, everything but brackets and commas is deleted (`bytes.translate`), and the few structural bytes
left are walked once. Measured on a 109 KB conversation: about twice orjson's parse of the same body,
which a regex blanking the strings would take 4x more (escapes slow it).
"""

from __future__ import annotations

from dataclasses import dataclass

from minigate.errors import InvalidRequest

__all__ = ["MAX_DEPTH", "BodyShape", "body_shape", "check_members"]

MAX_DEPTH = 64  # objects and arrays inside each other; OpenAI bodies (tools with JSON schemas) stay under 20

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b"{}[],")


@dataclass(frozen=True, slots=True)
class BodyShape:
    """How deep a body nests, and the commas between its top-level members, as the client wrote it."""

    depth: int
    separators: int


def body_shape(raw: bytes) -> BodyShape:
    """The shape of `raw`; refuses (400) a body nested deeper than MAX_DEPTH before it is parsed."""
    structure = _outside_strings(raw).translate(None, _NOT_STRUCTURE)
    depth = deepest = 0
    commas = 0
    for byte in structure:
        if byte in b"{[":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    raise InvalidRequest(
                        f"The request body nests objects and arrays more than {MAX_DEPTH} levels deep; "
                        f"this gateway accepts at most {MAX_DEPTH}. Send a flatter request."
                    )
        elif byte in b"}]":
            depth -= 1
        elif depth == 1:
            commas += 1
    return BodyShape(deepest, commas)


def check_members(shape: BodyShape, keys: int) -> None:
    """Refuse a body whose top-level object repeats a key: the parsed object has fewer keys than written."""
    if keys and shape.separators + 1 != keys:  # an empty object has no member to repeat
        raise InvalidRequest(
            "The request body repeats a top-level key (for example \"model\" twice); upstreams disagree on "
            "which one wins, so this gateway refuses it. Send each parameter once."
        )


def _outside_strings(raw: bytes) -> bytes:
    """`raw` without the contents of its JSON strings: what lies between quotes that no odd run of
    backslashes escapes."""
    outside: list[bytes] = []
    is_inside = False
    for piece in raw.split(b'"'):
        if not is_inside:
            outside.append(piece)
            is_inside = True
        elif not (piece.endswith(b"\\") and (len(piece) - len(piece.rstrip(b"\\"))) % 2):
            is_inside = False  # this quote closes the string
    return b"".join(outside)
