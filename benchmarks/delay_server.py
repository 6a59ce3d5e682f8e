"""A HEAD server that answers every image request after a fixed delay, using ~no CPU.

``benchmarks/bench_fetch.py --latency L`` starts it in a child process to stand for a
server L seconds away: each ``HEAD /v1/images/{id}`` is answered ``L`` seconds after its
request arrived, with the vendor sample's headers (the same table as the nginx config in
``benchmarks/bench_fetch.py``: 17 ``X-Image-Meta-*`` headers with the id echoed, ``Etag``,
``X-Openstack-Request-Id``, ``Content-Length: 0``), keep-alive on. The wait is one
``loop.call_later`` per request on a uvloop event loop and the answer one pre-built byte
string, so the server's own cost per request is a few tens of µs: at 100 in flight and
50 ms it must sustain 2,000 req/s, i.e. a few % of one core (``bench_fetch.py`` measures
its CPU and how late its timers fire, and prints both).

``GET /nginx_status`` answers at once in nginx's ``stub_status`` layout (accepted,
handled, requests), so the benchmark counts connections the same way for both servers,
followed by one line ``delay count p50 p99 max``: the image answers sent since the
previous status request and their measured delays in ms (from the request's last byte
read to its answer written), so a status request before and after a run gives the run's.

Run it as ``python benchmarks/delay_server.py --latency 0.05`` (``--help``); its first
line of output is its URL. Nothing but 127.0.0.1 is bound. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import cast

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    uvloop = None  # type: ignore[assignment]

# The vendor sample's headers (docs/ARCHITECTURE.md, "The wire"); the same table as nginx's
# config in bench_fetch.py; {id} is the requested id, {rid} a per-request counter.
_TEMPLATE = (
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/html; charset=UTF-8\r\n"
    "Content-Length: 0\r\n"
    "X-Image-Meta-Id: {id}\r\n"
    "X-Image-Meta-Deleted: False\r\n"
    "X-Image-Meta-Container_format: bare\r\n"
    "X-Image-Meta-Checksum: 64d7c1cd2b6f60c92c14662941cb7913\r\n"
    "X-Image-Meta-Protected: False\r\n"
    "X-Image-Meta-Min_disk: 0\r\n"
    "X-Image-Meta-Created_at: 2016-05-22T06:04:20.425843\r\n"
    "X-Image-Meta-Size: 13167616\r\n"
    "X-Image-Meta-Status: active\r\n"
    "X-Image-Meta-Is_public: True\r\n"
    "X-Image-Meta-Min_ram: 0\r\n"
    "X-Image-Meta-Owner: 23f4cb75768d4febb39542ef6fe169f3\r\n"
    "X-Image-Meta-Updated_at: 2016-05-22T06:04:22.719791\r\n"
    "X-Image-Meta-Disk_format: qcow2\r\n"
    "X-Image-Meta-Name: cirros\r\n"
    "X-Image-Meta-Property-Os_distro: cirros\r\n"
    "X-Image-Meta-Property-Architecture: x86_64\r\n"
    "Etag: 64d7c1cd2b6f60c92c14662941cb7913\r\n"
    "X-Openstack-Request-Id: req-{rid:032x}\r\n"
    "\r\n"
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
_IMAGES = b"/v1/images/"
_MAX_HEAD = 65536  # a request head longer than this is not one of ours: close


class Counters:
    """What ``/nginx_status`` reports: connections, requests, measured delays."""

    def __init__(self) -> None:
        self.accepted = 0
        self.active = 0
        self.requests = 0
        self.delays: list[float] = []  # seconds, one per image answer sent

    def status(self) -> bytes:
        ordered = sorted(self.delays)
        self.delays = []
        if ordered:
            p50 = ordered[len(ordered) // 2]
            p99 = ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)]
            delay = (
                f"delay {len(ordered)} {p50 * 1e3:.3f} {p99 * 1e3:.3f} {ordered[-1] * 1e3:.3f}\n"
            )
        else:
            delay = "delay 0 - - -\n"
        body = (
            f"Active connections: {self.active}\n"
            "server accepts handled requests\n"
            f" {self.accepted} {self.accepted} {self.requests}\n" + delay
        ).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class DelayProtocol(asyncio.Protocol):
    """One connection: parse request heads, answer each image HEAD ``latency`` s later."""

    def __init__(self, loop: asyncio.AbstractEventLoop, latency: float, counters: Counters):
        self._loop = loop
        self._latency = latency
        self._counters = counters
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # uvloop sets it too; an answer must never wait for an ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._counters.accepted += 1
        self._counters.active += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._counters.active -= 1
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buffer = buffer[:end], buffer[end + 4 :]
            self._answer(head)
        if len(buffer) > _MAX_HEAD and self._transport is not None:
            self._transport.close()
        self._buffer = buffer

    def _answer(self, head: bytes) -> None:
        counters = self._counters
        counters.requests += 1
        line = head.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        target = parts[1] if len(parts) == 3 else b""
        if target == b"/nginx_status":
            self._write(counters.status(), None)
        elif target.startswith(_IMAGES) and b"/" not in target[len(_IMAGES) :]:
            image_id = target[len(_IMAGES) :].decode("latin-1")
            answer = _TEMPLATE.format(id=image_id, rid=counters.requests).encode("latin-1")
            # Answers of one connection keep their order: the same delay for every
            # request, and uvloop fires timers that are due together in the order made.
            self._loop.call_later(self._latency, self._write, answer, time.perf_counter())
        else:
            self._write(_NOT_FOUND, None)

    def _write(self, answer: bytes, received: float | None) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._transport.write(answer)
        if received is not None:
            self._counters.delays.append(time.perf_counter() - received)


async def serve(latency: float, port: int) -> None:
    loop = asyncio.get_running_loop()
    counters = Counters()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    # A backlog well above any --concurrency: C clients connect at the same moment.
    server = await loop.create_server(
        lambda: DelayProtocol(loop, latency, counters), sock=sock, backlog=4096
    )
    host, bound = sock.getsockname()[:2]
    print(f"http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds (default: 0.05)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: free)")
    args = parser.parse_args(argv)
    if not 0 <= args.latency <= 60:
        parser.error("--latency must be from 0 to 60 seconds")
    if uvloop is not None:
        uvloop.run(serve(args.latency, args.port))
    else:  # pragma: no cover
        asyncio.run(serve(args.latency, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
