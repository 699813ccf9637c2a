"""What the request flow hands back to the client, apart from the HTTP server that carries it.

The flow (flow.py, handoffs.py, sse.py) answers in one of two ways:
- a complete answer: it returns an `Answer` (status, body, headers);
- a stream: it asks the `Reply` it was given for a stream (`await reply.stream(headers)`), writes
  D's events into it, and returns `STREAMED`.

Two servers carry these: the lean front (front.py) for the generate routes on connections it
serves itself, and aiohttp for everything else (`AiohttpReply`). The flow knows neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web


@dataclass(slots=True)
class Answer:
    """A complete answer."""

    status: int
    body: bytes
    headers: dict[str, str]  # Content-Type included


class _Streamed:
    """The flow's result when it wrote the answer as a stream (status 200)."""

    status = 200

    def __repr__(self) -> str:
        return "STREAMED"


STREAMED = _Streamed()
Result = Answer | _Streamed


def json_answer(status: int, body: bytes, request_id: str | None = None) -> Answer:
    headers = {"Content-Type": "application/json"}
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    return Answer(status, body, headers)


class Stream(Protocol):
    """A response being streamed: bytes out as they come, then the end (aiohttp's spelling)."""

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self, data: bytes = b"") -> None: ...


class Reply(Protocol):
    """The client side of one request, as the flow sees it."""

    async def stream(self, headers: dict[str, str]) -> Stream:
        """Send status 200 and `headers` now; the body follows through the returned stream."""


class AiohttpReply:
    """A request served by aiohttp: the stream is an aiohttp StreamResponse."""

    __slots__ = ("_out", "_request")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._out: web.StreamResponse | None = None

    async def stream(self, headers: dict[str, str]) -> Stream:
        out = self._out = web.StreamResponse(status=200, headers=headers)
        await out.prepare(self._request)
        return out

    def response(self, result: Result) -> web.StreamResponse:
        """What the aiohttp handler returns for the flow's result."""
        if isinstance(result, Answer):
            return web.Response(status=result.status, body=result.body, headers=result.headers)
        if self._out is None:  # a stream the flow did not start: a bug of ours
            raise RuntimeError("the flow said it streamed but opened no stream")
        return self._out
