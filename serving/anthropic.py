"""The `anthropic` upstream kind: chat completions sent to Anthropic's Messages API, replies translated back.

To the gateway this is one more `UpstreamClient`: it takes an OpenAI request body and returns a reply
whose bytes are OpenAI's (a `chat.completion` body, `chat.completion.chunk` events ending with
`[DONE]`, or an error in OpenAI's shape), so nothing above `serving` knows which protocol was spoken.
The translation itself is pure code in `minigate.protocols` (`anthropic_request`, `anthropic_reply`,
`anthropic_stream`); this module only adds the HTTP: the pooled transport, timeouts and transport
errors are `UpstreamClient`'s and `UpstreamReply`'s.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, replace

import httpx
import orjson

from minigate.errors import InvalidRequest, UpstreamError, UpstreamStreamCut, UpstreamUnavailable
from minigate.protocols.anthropic_reply import ReplyError, completion, error_body, openai_status
from minigate.protocols.anthropic_request import MessagesRequest, to_messages_request
from minigate.protocols.anthropic_stream import StreamTranslator
from minigate.serving.options import ClientOptions
from minigate.serving.upstream import Operation, UpstreamClient, UpstreamReply, not_served

__all__ = ["AnthropicClient", "AnthropicReply"]


@dataclass
class AnthropicReply(UpstreamReply):
    """An Anthropic reply that reads as OpenAI's; `status` is already the client's (529 becomes 503)."""

    request: MessagesRequest
    created: int  # the completion's `created`: when the request was sent

    async def read(self, limit: int | None = None) -> bytes:
        body = await super().read(limit)
        if self.response.status_code != 200:
            return error_body(self.response.status_code, body, self.upstream)
        try:
            return completion(body, self.request.answer, self.created)
        except ReplyError as exc:
            raise self._failure(exc) from exc

    async def chunks(self, limit: int | None = None) -> AsyncGenerator[bytes, None]:
        translator = StreamTranslator(self.request, self.created)
        source = super().chunks(limit)
        try:
            async for chunk in source:
                if translated := translator.feed(chunk):
                    yield translated
            if rest := translator.close():
                yield rest
        except ReplyError as exc:
            raise self._failure(exc) from exc
        finally:
            await source.aclose()

    def _failure(self, exc: ReplyError) -> UpstreamError:
        if exc.kind == "stream_cut":
            return UpstreamStreamCut(f"upstream {self.upstream!r} ended the stream early ({exc}); retry the request",
                                     upstream=self.upstream, kind=exc.kind)
        return UpstreamUnavailable(f"upstream {self.upstream!r} failed: {exc}", upstream=self.upstream, kind=exc.kind)


class AnthropicClient(UpstreamClient):
    """A pooled connection to Anthropic's Messages API (or anything speaking it).

    >>> options = ClientOptions(name="claude", base_url="https://api.anthropic.com", api_key="sk-ant-...")
    >>> client = AnthropicClient(options, anthropic_version="2023-06-01")
    >>> client.base_url
    'https://api.anthropic.com/v1'
    >>> reply = await client.chat(openai_body)  # doctest: +SKIP
    >>> await reply.read()  # doctest: +SKIP
    b'{"id":"msg_...","object":"chat.completion",...}'
    """

    def __init__(self, options: ClientOptions, *, anthropic_version: str) -> None:
        root = options.base_url.rstrip("/").removesuffix("/v1")  # a base URL copied with /v1 works too
        headers = {"anthropic-version": anthropic_version, **options.headers}
        super().__init__(replace(options, base_url=f"{root}/v1", headers=headers))
        # The base class posts chat to {base_url}/chat/completions; `probe`'s GET {base_url}/models is Anthropic's too.
        self._urls["chat"] = httpx.URL(f"{self.base_url}/messages")

    def _key_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    async def send(self, operation: Operation, body: bytes,
                   headers: Mapping[str, str] | None = None) -> AnthropicReply:
        """Translate and send; raises `InvalidRequest` (400) for what Anthropic can't be asked."""
        if operation != "chat":
            raise not_served(self.name, "anthropic", operation)
        payload = orjson.loads(body)
        if not isinstance(payload, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        request = to_messages_request(payload)
        created = int(time.time())
        reply = await super().send("chat", orjson.dumps(request.body), headers)
        return AnthropicReply(openai_status(reply.status), reply.headers, reply.response, reply.upstream,
                              reply.deadline, request, created)
