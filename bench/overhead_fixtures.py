"""What the overhead benchmark sends and what its fixed upstream answers.

The upstream is one nginx server with two locations, because nginx cannot choose a reply by
looking at the request body (`"stream": true`):

* `/v1/chat/completions` returns a fixed `chat.completion` JSON body (~600 bytes);
* `/sse/v1/chat/completions` returns a fixed `text/event-stream` of `chat.completion.chunk`
  events ending in `data: [DONE]`.

Streamed requests therefore ask for the model `gpt-4.1-stream`, which minigate and LiteLLM map
to an upstream whose base URL ends in `/sse/v1`; the minimal proxy forwards the request path,
so it (and the direct target) is called at `/sse/v1/chat/completions`.

minigate is also called through its two translating ingresses, `/v1/responses` (OpenAI's
Responses API) and `/v1/messages` (Anthropic's Messages API), with the same system prompt, user
turn and limits, so the upstream receives the same chat request whichever API the client spoke.
Every request carries the key as `Authorization: Bearer`, which all three ingresses accept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

__all__ = ["Mode", "MODES", "Api", "APIS", "API_PATHS", "JSON_PATH", "SSE_PATH", "request_body",
           "completion_body", "sse_body", "nginx_config", "wrk_script"]

Mode = Literal["json", "sse"]
MODES: tuple[Mode, ...] = ("json", "sse")
JSON_PATH = "/v1/chat/completions"
SSE_PATH = "/sse/v1/chat/completions"
Api = Literal["chat", "responses", "messages"]
APIS: tuple[Api, ...] = ("chat", "responses", "messages")
API_PATHS: dict[Api, str] = {"chat": JSON_PATH, "responses": "/v1/responses", "messages": "/v1/messages"}

_ID = "chatcmpl-BX4m2kqV7Lz9wQeR1tYcN8aJ3sHfD"
_CREATED = 1747049215
_MODEL = "gpt-4.1-2025-04-14"
_ANSWER = ("The invoice total is 1,284.50 EUR, due on 2025-06-30. It lists three line items: "
           "consulting (960.00), travel (214.50) and materials (110.00). VAT is included.")
_SYSTEM = "You extract totals and due dates from invoices. Answer in one short paragraph."
_USER = ("Invoice INV-2291 from Northwind Consulting GmbH, issued 2025-05-31, payment within 30 days. "
         "Consulting 960.00, travel 214.50, materials 110.00, VAT included. What is the total and when is it due?")


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def request_body(mode: Mode, api: Api = "chat") -> str:
    """The request every target receives: a system prompt and one user turn, in `api`'s shape.

    Responses: `instructions` and an `input` string; Messages: `system` and a `messages` list
    with the `max_tokens` Anthropic requires. Both translate to the chat request.
    """
    body: dict[str, object] = {"model": "gpt-4.1-stream" if mode == "sse" else "gpt-4.1", **_API_FIELDS[api]}
    if mode == "sse":
        body["stream"] = True
    return _dumps(body)


_API_FIELDS: dict[Api, dict[str, object]] = {
    "chat": {"messages": [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER}],
             "temperature": 0.2, "max_tokens": 256},
    "responses": {"instructions": _SYSTEM, "input": _USER, "temperature": 0.2, "max_output_tokens": 256},
    "messages": {"system": _SYSTEM, "messages": [{"role": "user", "content": _USER}],
                 "temperature": 0.2, "max_tokens": 256},
}


def completion_body() -> str:
    """A realistic non-streamed `chat.completion` as OpenAI returns it."""
    return _dumps({
        "id": _ID, "object": "chat.completion", "created": _CREATED, "model": _MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": _ANSWER, "refusal": None, "annotations": []},
            "logprobs": None, "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 71, "completion_tokens": 52, "total_tokens": 123,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
        "service_tier": "default", "system_fingerprint": "fp_b3f1157249",
    })


def _chunk(delta: dict[str, object], finish_reason: str | None) -> str:
    event = {"id": _ID, "object": "chat.completion.chunk", "created": _CREATED, "model": _MODEL,
             "service_tier": "default", "system_fingerprint": "fp_b3f1157249",
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    return f"data: {_dumps(event)}\n\n"


def sse_body() -> str:
    """A streamed reply: a role chunk, one content chunk per word, a stop chunk, then [DONE]."""
    words = _ANSWER.split(" ")
    texts = [word if i == 0 else " " + word for i, word in enumerate(words)]
    events = [_chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    events += [_chunk({"content": text}, None) for text in texts]
    events.append(_chunk({}, "stop"))
    return "".join(events) + "data: [DONE]\n\n"


def _nginx_string(text: str) -> str:
    # In a single-quoted nginx string `$` starts a variable and `\` an escape; keep both out.
    if any(ch in text for ch in "$\\'"):
        raise ValueError("upstream body must not contain $, \\ or '")
    return "'" + text.replace("\n", "\\n") + "'"


def _nginx_return(text: str, name: str) -> str:
    # nginx caps one config token at 4 KiB, so a longer body is set in pieces and joined.
    pieces = [text[i:i + 1800] for i in range(0, len(text), 1800)]
    sets = "".join(f"set ${name}{i} {_nginx_string(piece)}; " for i, piece in enumerate(pieces))
    joined = "".join(f"${name}{i}" for i in range(len(pieces)))
    return f"{sets}return 200 '{joined}';"


def nginx_config(workdir: Path, port: int) -> str:
    """A self-contained nginx config: foreground, one worker, every path inside `workdir`."""
    temp = {name: workdir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return f"""worker_processes 1;
daemon off;
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx-error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        location = {JSON_PATH} {{ default_type application/json; {_nginx_return(completion_body(), "json")} }}
        location = {SSE_PATH} {{ default_type text/event-stream; {_nginx_return(sse_body(), "sse")} }}
    }}
}}
"""


_WRK_DONE = """
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
        '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
        '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk_varying_script(template: str, api_key: str) -> str:
    """Like `wrk_script`, but each request's body is `template` with `{n}` replaced by the next number
    (four digits, from a random start per wrk thread).

    Real traffic repeats its system prompts and schemas but not its users' words: a benchmark that sent
    one body over and over would flatter anything that remembers what it saw.
    """
    if "]==]" in template:
        raise ValueError("request body must not contain ]==]")
    return (f'local template = [==[{template}]==]\n'
            'local headers = {["Content-Type"] = "application/json", '
            f'["Authorization"] = "Bearer {api_key}"}}\n'
            'local n = 0\n'
            'init = function(args) math.randomseed(os.time() + math.floor(os.clock() * 1e6)); '
            'n = math.random(0, 100000000) end\n'
            'request = function()\n'
            '    n = n + 1\n'
            '    local body = string.gsub(template, "{n}", string.format("%04d", n % 10000))\n'
            '    return wrk.format("POST", nil, headers, body)\n'
            'end\n' + _WRK_DONE)


def wrk_script(body: str, api_key: str) -> str:
    """A wrk Lua script that POSTs `body` and prints its summary as one `WRK_JSON {...}` line."""
    if "]==]" in body:
        raise ValueError("request body must not contain ]==]")
    return (f'wrk.method = "POST"\nwrk.body = [==[{body}]==]\n'
            f'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {api_key}"\n' + _WRK_DONE)
