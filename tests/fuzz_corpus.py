"""Malformed requests, as exact bytes, that the gateway must answer quickly, correctly and without a 5xx.

Each `Malformed` is one HTTP/1.1 request written byte for byte, so framing faults (a Content-Length
that lies, two of them, a chunked body over the limit) reach the server as an attacker would send them;
tests/test_fuzz.py sends every case on its own socket and reads the answer with a deadline.

Example:

    case = Malformed("model is a number", body=b'{"model": 1, "messages": []}')
    case.request(host="127.0.0.1:8080", key="sk-...")  # the bytes that go on the wire
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import orjson

__all__ = ["CORPUS", "LIMIT", "Malformed"]

CHAT = "/v1/chat/completions"
CALLS = "/v1/minigate/calls"
LIMIT = 16 * 1024 * 1024  # server.max_body_bytes's default: the corpus' huge bodies straddle it
MIB = 1024 * 1024

Framing = Literal["length", "chunked", "as_written"]


@dataclass(frozen=True)
class Malformed:
    """One request: its body and how it is framed.

    `framing`: "length" adds a true Content-Length, "chunked" sends the body in 1 MiB chunks, and
    "as_written" adds nothing, so the case's own `headers` frame it (or misframe it).
    `expect`: the status the gateway must answer, when the case pins one down.
    """

    name: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    path: str = CHAT
    method: str = "POST"
    framing: Framing = "length"
    expect: int | None = None

    def request(self, host: str, key: str) -> bytes:
        head = [f"{self.method} {self.path} HTTP/1.1", f"host: {host}", f"authorization: Bearer {key}",
                "content-type: application/json", *(f"{name}: {value}" for name, value in self.headers)]
        if self.framing == "length":
            head.append(f"content-length: {len(self.body)}")
        elif self.framing == "chunked":
            head.append("transfer-encoding: chunked")
        body = b"".join(_chunked(self.body)) if self.framing == "chunked" else self.body
        return "\r\n".join(head).encode() + b"\r\n\r\n" + body


def _chunked(body: bytes, size: int = MIB) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        piece = body[start:start + size]
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def _chat(**fields: object) -> bytes:
    """A valid chat body with `fields` replacing or adding members."""
    return orjson.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], **fields})


def _nested(levels: int) -> bytes:
    """A chat body whose `metadata` nests `levels` arrays deep in all (the body itself is one level)."""
    inner = b"[" * (levels - 1) + b"1" + b"]" * (levels - 1)
    return b'{"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}], "metadata": ' + inner + b"}"


def _with_content(size: int) -> bytes:
    return _chat(messages=[{"role": "user", "content": "x" * size}])


def _wrong_types() -> list[Malformed]:
    """Fields the gateway reads are refused (400); the others are the upstream's to judge, so they are forwarded."""
    refused: dict[str, list[object]] = {
        "model": [1, ["gpt-4.1"], None, "", {"name": "gpt-4.1"}, True],
        "messages": ["hi", {"role": "user", "content": "hi"}, [], None, 7],
        "stream": ["yes", 1, [], {}],
    }
    forwarded: dict[str, list[object]] = {
        "stream_options": [[], "on", 1], "tools": [{"type": "function"}, "none", [1, None]],
        "tool_choice": [7, ["auto"]], "response_format": ["json", []], "temperature": ["hot", None, -1e308],
        "max_tokens": [-1, 1.5, "10", 2 ** 64 - 1], "n": [0, -3, "2", 1.5], "user": [["u"], 12],
        "metadata": ["x", [1]], "messages": [[1, "x", None], [{"role": 7, "content": {"a": 1}}]],
    }
    cases = [Malformed(f"{field} is {orjson.dumps(value).decode()[:20]}", _chat(**{field: value}), expect=400)
             for field, values in refused.items() for value in values]
    return cases + [Malformed(f"{field} is {orjson.dumps(value).decode()[:20]} (forwarded)", _chat(**{field: value}))
                    for field, values in forwarded.items() for value in values]


def _syntax() -> list[Malformed]:
    return [
        Malformed("empty body", b"", expect=400),
        Malformed("not json", b"hello", expect=400),
        Malformed("truncated", _chat()[:-5], expect=400),
        Malformed("trailing garbage", _chat() + b"}}", expect=400),
        Malformed("two objects", _chat() + _chat(), expect=400),
        Malformed("array body", b"[" + _chat() + b"]", expect=400),
        Malformed("string body", b'"model"', expect=400),
        Malformed("null body", b"null", expect=400),
        Malformed("NaN", _chat()[:-1] + b', "temperature": NaN}', expect=400),
        Malformed("Infinity", _chat()[:-1] + b', "temperature": Infinity}', expect=400),
        Malformed("-Infinity", _chat()[:-1] + b', "max_tokens": -Infinity}', expect=400),
        Malformed("single quotes", b"{'model': 'gpt-4.1'}", expect=400),
        Malformed("comment", b'/* x */ ' + _chat(), expect=400),
        Malformed("bad utf-8 in a string", _chat()[:-3] + b'\xff\xfe"}]}', expect=400),
        Malformed("lone surrogate escape", _chat(user="\\ud800").replace(b"\\\\ud800", b"\\ud800")),
        Malformed("overlong utf-8", b'{"model": "gpt-4.1\xc0\xaf", "messages": [1]}', expect=400),
        Malformed("NUL bytes", b"\x00" * 64, expect=400),
        Malformed("utf-16 body", _chat().decode().encode("utf-16"), expect=400),
        Malformed("utf-8 BOM", b"\xef\xbb\xbf" + _chat()),
        Malformed("unterminated string", b'{"model": "gpt-4.1', expect=400),
        Malformed("escape at the end", b'{"model": "gpt-4.1\\', expect=400),
        Malformed("huge number", _chat()[:-1] + b', "seed": 1' + b"0" * 5000 + b"}"),
    ]


def _duplicates() -> list[Malformed]:
    body = b'{"model": "SMUGGLED", "model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}]}'
    messages = b'{"model": "gpt-4.1", "messages": [], "messages": [{"role": "user", "content": "x"}]}'
    nested = b'{"model": "gpt-4.1", "messages": [{"role": "user", "role": "system", "content": "x"}]}'
    return [Malformed("duplicate model", body, expect=400), Malformed("duplicate messages", messages, expect=400),
            Malformed("duplicate key inside a message (forwarded)", nested)]


def _nesting() -> list[Malformed]:
    deep_string = _chat(messages=[{"role": "user", "content": "[" * 10_000}])
    return [Malformed("64 levels", _nested(64), expect=200), Malformed("65 levels", _nested(65), expect=400),
            Malformed("300 levels", _nested(300), expect=400), Malformed("5000 levels", _nested(5000), expect=400),
            Malformed("brackets inside a string", deep_string),
            Malformed("unbalanced closers", b'{"model": "gpt-4.1", "messages": ]]]]}', expect=400)]


def _sizes() -> list[Malformed]:
    over = _with_content(17 * MIB)
    return [
        Malformed("15 MiB content", _with_content(15 * MIB), expect=200),
        Malformed("17 MiB content", over, expect=413),
        Malformed("17 MiB chunked", over, framing="chunked", expect=413),
        Malformed("17 MiB declared, 10 bytes sent", b"0123456789",
                  headers=(("content-length", str(17 * MIB)),), framing="as_written", expect=413),
        Malformed("1 MiB of keys", b"{" + b",".join(b'"k%d": 1' % i for i in range(80_000)) + b"}", expect=400),
    ]


def _encodings() -> list[Malformed]:
    zipped = gzip.compress(_chat())
    bomb = gzip.compress(b" " * (64 * MIB))
    return [Malformed("gzip body", zipped, headers=(("content-encoding", "gzip"),), expect=400),
            Malformed("gzip bomb", bomb, headers=(("content-encoding", "gzip"),), expect=400),
            Malformed("form content type", _chat(), headers=(("content-type", "application/x-www-form-urlencoded"),)),
            Malformed("chunked, valid", _chat(), framing="chunked", expect=200)]


def _framing() -> list[Malformed]:
    body = _chat()
    return [
        Malformed("content-length not a number", body, headers=(("content-length", "12a"),), framing="as_written",
                  expect=400),
        Malformed("content-length negative", body, headers=(("content-length", "-1"),), framing="as_written",
                  expect=400),
        Malformed("two different content-lengths", body,
                  headers=(("content-length", str(len(body))), ("content-length", "5")), framing="as_written",
                  expect=400),
        Malformed("content-length smaller than the body", body, headers=(("content-length", str(len(body) - 9)),),
                  framing="as_written", expect=400),
        Malformed("content-length larger than the body", body, headers=(("content-length", str(len(body) + 50)),),
                  framing="as_written", expect=408),
        Malformed("content-length and chunked", b"".join(_chunked(body)),
                  headers=(("content-length", "3"), ("transfer-encoding", "chunked")), framing="as_written",
                  expect=400),
        Malformed("bad chunk size", b"zz\r\n" + body + b"\r\n0\r\n\r\n",
                  headers=(("transfer-encoding", "chunked"),), framing="as_written", expect=400),
    ]


def _calls_api() -> list[Malformed]:
    return [
        Malformed("calls: status of 25 digits", path=f"{CALLS}?status={'9' * 25}", method="GET", expect=400),
        Malformed("calls: limit not a number", path=f"{CALLS}?limit=abc", method="GET", expect=400),
        Malformed("calls: since unreadable", path=f"{CALLS}?since=last%20tuesday", method="GET", expect=400),
        Malformed("calls: cursor forged", path=f"{CALLS}?cursor=%00%ff", method="GET", expect=400),
        Malformed("calls: POST", _chat(), path=CALLS, expect=405),
        Malformed("chat: trailing slash", _chat(), path=f"{CHAT}/", expect=404),
        Malformed("chat: GET", path=CHAT, method="GET", expect=405),
    ]


CORPUS: list[Malformed] = [*_syntax(), *_wrong_types(), *_duplicates(), *_nesting(), *_sizes(), *_encodings(),
                           *_framing(), *_calls_api()]
