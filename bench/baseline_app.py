"""The benchmark's baseline: an aiohttp handler that does nothing but send_and_wait to Kafka.

No signature check, no validation, no spool: what a thin, non-durable relay
costs. The producer has the gateway's settings (idempotent, acks=all, same linger).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

import uvloop

from aiohttp import web
from aiokafka import AIOKafkaProducer


Handler = Callable[[web.Request], Awaitable[web.Response]]
Hook = Callable[[web.Application], Awaitable[None]]


def main() -> None:
    bootstrap, topic, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    state: dict[str, AIOKafkaProducer] = {}

    async def start(app: web.Application) -> None:
        state["producer"] = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5, max_batch_size=64 * 1024
        )
        await state["producer"].start()

    async def stop(app: web.Application) -> None:
        await state["producer"].stop()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        await state["producer"].send_and_wait(topic, body, key=request.headers["Idempotency-Key"].encode())
        return web.json_response({"status": "accepted"}, status=202)

    serve(port, receive, start, stop)


def serve(port: int, receive: Handler, start: Hook, stop: Hook) -> None:
    """Answer the partner webhook's path with ``receive`` (and /healthz), as the benchmark's servers all do."""
    app = web.Application()
    app.router.add_get("/healthz", lambda request: web.json_response({"status": "ok"}))
    app.router.add_post("/webhook/{partner}", receive)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    # The same event loop as `intake serve`, so the comparison is of the work done, not of the loop.
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
