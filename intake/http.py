"""Reading an HTTP request's body whole and within a limit, the same way on every channel."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

_CHUNK = 64 * 1024
# What aiohttp sets on a request's stream when the body cannot be had: a body that does not decompress
# (RequestPayloadError), broken framing (BadHttpMessage), a client that closed before the end (ConnectionResetError).
# All are the sender's doing; a reader of the stream (read_body, a multipart reader) turns them into a 400.
STREAM_ERRORS: tuple[type[Exception], ...] = (RequestPayloadError, BadHttpMessage, ConnectionResetError)


# Set on the application by the gateway (HttpConfig.body_timeout_seconds); without it a body may take any time.
BODY_TIMEOUT: web.AppKey[float] = web.AppKey("body_timeout_seconds", float)


class BodyTooLarge(Exception):
    """The body is (or says it is) larger than the channel accepts: answer 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} bytes")
        self.limit = limit


class BodyUnreadable(Exception):
    """The body could not be read to its end (broken chunked framing or compression, the client went away): answer 400."""


class BodyTooSlow(BodyUnreadable):
    """The body did not arrive within the application's BODY_TIMEOUT: answer 408, so that a real sender tries again."""


def declared_too_large(request: web.Request, limit: int) -> bool:
    """True when Content-Length already says more than ``limit``: refused before a byte of the body is read."""
    return request.content_length is not None and request.content_length > limit


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, read until its end; raises BodyTooLarge past ``limit`` bytes, BodyUnreadable when it cannot be had,
    BodyTooSlow when it has not arrived within the application's BODY_TIMEOUT.

    ``request.content.read(n)`` returns what happens to be buffered, which is
    only the first TCP segment of a body sent in several: a signature over it
    fails and JSON is cut short. Reading in chunks until EOF gets all of it,
    and counting as it comes bounds what a client can make us hold (aiohttp
    has already undone any Content-Encoding, so the limit is on what we parse).
    """
    if declared_too_large(request, limit):
        raise BodyTooLarge(limit)
    if request.content.is_eof():
        # All of it has arrived (most bodies come with their headers): nothing to wait for, so no timer to arm and cancel.
        return await _read_body(request, limit)
    # aiohttp bounds neither the time to send a body nor the pauses within one: a client sending a byte a minute would hold
    # the handler, the connection and what it sent so far for as long as it likes.
    timeout = request.config_dict.get(BODY_TIMEOUT)
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(request, limit)
    except TimeoutError:
        raise BodyTooSlow(f"not received within {timeout:g} s") from None


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and "Content-Encoding" not in request.headers:
        # The framing bounds the body by Content-Length, checked above: one read to the end, without
        # counting chunk by chunk (the common case, and the cheaper one per request).
        try:
            return await request.content.read()
        except STREAM_ERRORS as error:
            raise BodyUnreadable(type(error).__name__) from None
    body = bytearray()
    try:
        async for chunk in request.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge(limit)
    except STREAM_ERRORS as error:
        raise BodyUnreadable(type(error).__name__) from None
    return bytes(body)
