"""A TCP relay: guests' path to an external backup store.

Guests reach only the platform's service address (the guest firewall, QEMU's forward, the
lab's data network all lead there). When the operator points the platform at an S3 endpoint
of their own, ``onep up`` runs this relay on the service address's store port: every
connection is piped, byte for byte, to the endpoint. TLS stays end to end: guests name the
endpoint's host (mapped to their path in their /etc/hosts) and check its certificate.

``python -m oneplatform.hostsvc.relay LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT``
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

log = logging.getLogger("onep-relay")
CONNECT_TIMEOUT = 10.0
CHUNK = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other way may still be talking
    except (ConnectionError, OSError):
        writer.close()


class Relay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            log.warning("relay: %s:%s unreachable: %s", *self.target, exc)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()


async def serve(listen_host: str, listen_port: int, target_host: str, target_port: int) -> None:
    relay = Relay(target_host, target_port)
    server = await asyncio.start_server(relay.handle, listen_host, listen_port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("relay: %s:%s -> %s:%s", listen_host, listen_port, target_host, target_port)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 4 or not argv[1].isdigit() or not argv[3].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(argv[0], int(argv[1]), argv[2], int(argv[3])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
