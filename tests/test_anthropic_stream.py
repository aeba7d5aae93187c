"""Anthropic SSE streams translated to OpenAI chunk events, incrementally, however the bytes are cut."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from minigate.protocols.anthropic_reply import ReplyError
from minigate.protocols.anthropic_request import MessagesRequest
from minigate.protocols.anthropic_stream import StreamTranslator
from minigate.protocols.anthropic_tools import Answer


def event(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\n".encode() + b"data: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


START = event("message_start", message={
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 30}})


def end(stop_reason: str, output_tokens: int = 9) -> bytes:
    return (event("message_delta", delta={"stop_reason": stop_reason, "stop_sequence": None},
                  usage={"output_tokens": output_tokens}) + event("message_stop"))


def text_block(index: int, *pieces: str) -> bytes:
    deltas = b"".join(event("content_block_delta", index=index, delta={"type": "text_delta", "text": piece})
                      for piece in pieces)
    return (event("content_block_start", index=index, content_block={"type": "text", "text": ""}) + deltas
            + event("content_block_stop", index=index))


def tool_block(index: int, name: str, *fragments: str) -> bytes:
    block = {"type": "tool_use", "id": f"toolu_{index}", "name": name, "input": {}}
    deltas = b"".join(event("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": f})
                      for f in ["", *fragments])
    start = event("content_block_start", index=index, content_block=block)
    return start + deltas + event("content_block_stop", index=index)


TEXT_STREAM = START + text_block(0, "Hello", " there") + event("ping") + end("end_turn")
TOOL_STREAM = (START + text_block(0, "Checking.") + tool_block(1, "lookup", '{"q": ', '"x"}') + tool_block(2, "now")
               + end("tool_use"))


def run(stream: bytes, request: MessagesRequest | None = None, piece: int | None = None) -> list[Any]:
    """The OpenAI events out, feeding the stream whole or `piece` bytes at a time."""
    translator = StreamTranslator(request or MessagesRequest({}), created=1700000000)
    size = piece or len(stream)
    out = b"".join(translator.feed(stream[i:i + size]) for i in range(0, len(stream), size)) + translator.close()
    assert out.endswith(b"data: [DONE]\n\n")
    return [orjson.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]


def deltas(events: list[Any]) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in events if e["choices"]]


def test_text_stream() -> None:
    events = run(TEXT_STREAM)
    assert deltas(events) == [{"role": "assistant", "content": ""}, {"content": "Hello"}, {"content": " there"}, {}]
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None, None, "stop"]
    assert {(e["id"], e["object"], e["created"], e["model"]) for e in events} == {
        ("msg_1", "chat.completion.chunk", 1700000000, "claude-x")}
    assert all("usage" not in e for e in events)


@pytest.mark.parametrize("piece", [1, 2, 7, 64])
def test_any_cut_of_the_bytes_gives_the_same_events(piece: int) -> None:
    assert run(TOOL_STREAM, piece=piece) == run(TOOL_STREAM)


@pytest.mark.parametrize("line_end", [b"\r\n", b"\r"])
def test_other_line_ends(line_end: bytes) -> None:
    assert run(TEXT_STREAM.replace(b"\n", line_end), piece=3) == run(TEXT_STREAM)


def test_tool_calls() -> None:
    assert deltas(run(TOOL_STREAM))[1:] == [
        {"content": "Checking."},
        {"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function",
                         "function": {"name": "lookup", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]},
        {"tool_calls": [{"index": 1, "id": "toolu_2", "type": "function",
                         "function": {"name": "now", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},  # a call with no input fragment
        {},
    ]
    assert run(TOOL_STREAM)[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_usage_chunk_when_asked() -> None:
    events = run(TEXT_STREAM, MessagesRequest({}, stream=True, include_usage=True))
    assert all(e["usage"] is None for e in events[:-1])
    assert events[-1]["choices"] == [] and events[-1]["usage"] == {
        "prompt_tokens": 42, "completion_tokens": 9, "total_tokens": 51, "prompt_tokens_details": {"cached_tokens": 30}}


def test_message_delta_usage_updates_what_message_start_said() -> None:
    stream = START + text_block(0, "x") + event("message_delta", delta={"stop_reason": "max_tokens"},
                                                usage={"input_tokens": 15, "output_tokens": 3}) + event("message_stop")
    events = run(stream, MessagesRequest({}, stream=True, include_usage=True))
    assert events[-1]["usage"]["prompt_tokens"] == 45 and events[-1]["usage"]["completion_tokens"] == 3
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_the_answer_tool_streams_as_content() -> None:
    stream = START + tool_block(0, "label", '{"label"', ': "billing"}') + end("tool_use")
    events = run(stream, MessagesRequest({}, answer=Answer("label")))
    assert "".join(d.get("content") or "" for d in deltas(events)) == '{"label": "billing"}'
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("tool_calls" in d for d in deltas(events))


def test_a_wrapped_answer_is_sent_whole_once_complete() -> None:
    answer = tool_block(1, "intent", '{"value"', ': "ship', 'ping"}')
    stream = START + text_block(0, "ignored") + answer + end("tool_use")
    assert deltas(run(stream, MessagesRequest({}, answer=Answer("intent", key="value"))))[1:] == [
        {"content": '"shipping"'}, {}]


def test_thinking_blocks_and_unknown_events_are_skipped() -> None:
    thinking = (event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""})
                + event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hmm"})
                + event("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "s"})
                + event("content_block_stop", index=0) + event("brand_new_event"))
    stream = START + thinking + text_block(1, "Hi") + end("end_turn")
    assert deltas(run(stream)) == [{"role": "assistant", "content": ""}, {"content": "Hi"}, {}]


def test_an_error_event_raises() -> None:
    translator = StreamTranslator(MessagesRequest({}), created=0)
    translator.feed(START)
    with pytest.raises(ReplyError, match="overloaded_error: Overloaded") as caught:
        translator.feed(event("error", error={"type": "overloaded_error", "message": "Overloaded"}))
    assert caught.value.kind == "stream_error"


def test_a_stream_without_message_stop_is_cut() -> None:
    translator = StreamTranslator(MessagesRequest({}), created=0)
    translator.feed(START + text_block(0, "partial"))
    with pytest.raises(ReplyError) as caught:
        translator.close()
    assert caught.value.kind == "stream_cut"


def test_an_unreadable_event_raises() -> None:
    with pytest.raises(ReplyError) as caught:
        StreamTranslator(MessagesRequest({}), created=0).feed(b"data: {not json\n\n")
    assert caught.value.kind == "invalid_reply"


def test_events_after_message_stop_are_ignored() -> None:
    assert run(TEXT_STREAM + text_block(1, "late")) == run(TEXT_STREAM)
