"""HTTP/1.1 requests written by hand on a socket: the timing and bytes aiohttp's client never produces."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import urlsplit


async def post_in_two_segments(url: str, headers: Mapping[str, str], body: bytes, *, pause: float = 0.05) -> tuple[int, bytes]:
    """POST with the head and the first half of the body in one write, the rest after ``pause``: (status, response body).

    What a slow network or a partner's proxy does: the server has only the first
    segment when the handler starts, and must wait for the rest.
    """
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        half = len(body) // 2
        writer.write(head + body[:half])
        await writer.drain()
        await asyncio.sleep(pause)
        writer.write(body[half:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    _headers, _, content = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), content


async def post_and_stall(url: str, headers: Mapping[str, str], sent: bytes, *, length: int, wait: float = 10) -> tuple[int, bytes]:
    """POST that announces ``length`` bytes of body, sends only ``sent`` and then nothing: (status, response body).

    What a slowloris client does, and a sender whose connection stalls; the answer is awaited ``wait`` seconds at most.
    """
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {length}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + sent)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=wait)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, _rest = head.partition(b"\r\n")
    return int(status_line.split()[1]), head


async def closed_after(url: str, sent: bytes = b"", *, trickle: bytes = b"", every: float = 0.2, wait: float = 10) -> float | None:
    """Open a connection, send ``sent``, then ``trickle`` a byte every ``every`` seconds (a header that never ends);
    how long the server kept the connection before closing it, None if it was still open after ``wait`` seconds."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    opened = asyncio.get_running_loop().time()

    async def dribble() -> None:
        for byte in trickle:
            await asyncio.sleep(every)
            writer.write(bytes([byte]))
            await writer.drain()

    dribbling = asyncio.create_task(dribble())
    try:
        writer.write(sent)
        await writer.drain()
        while await asyncio.wait_for(reader.read(65536), timeout=wait):
            pass  # an answer to a whole request, then the idle wait
        return asyncio.get_running_loop().time() - opened
    except (asyncio.TimeoutError, TimeoutError):
        return None
    except ConnectionError:  # closed while we were still writing
        return asyncio.get_running_loop().time() - opened
    finally:
        dribbling.cancel()
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
