"""The SMTP benchmark's baseline: a bare aiosmtpd server that answers 250 to every mail and discards it.

No parsing, no spool, no Kafka: what the SMTP protocol itself costs on aiosmtpd, the
library intake's listener is built on, on the same event loop (uvloop).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop
from aiosmtpd.smtp import SMTP, Envelope, Session


class Discard:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK"


async def serve(port: int) -> None:
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # one INFO line per command otherwise
    loop = asyncio.get_running_loop()
    handler = Discard()
    server = await loop.create_server(
        lambda: SMTP(handler, enable_SMTPUTF8=True, decode_data=False, hostname="bench", ident="bare", loop=loop),
        "127.0.0.1",
        port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("listening", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
