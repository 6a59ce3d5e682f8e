"""Non-ASCII header bytes as they really arrive, through aiohttp's real parser.

The emulator speaks UTF-8 like Glance did; other servers (or proxies) send Latin-1 bytes
or already-mangled text. A raw asyncio server on 127.0.0.1 writes exactly those bytes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from imgframe import fetch_images

IMAGE_ID = "3c3d1d01-b48a-4639-8a88-08be3b9b5d78"
NAMES: dict[str, bytes] = {
    "utf8": "niño-镜像".encode(),
    "latin1": "niño".encode("latin-1"),
    "mojibake": "niño".encode().decode("latin-1").encode(),  # 'niÃ±o' sent as UTF-8
}


def _response(name: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/html; charset=UTF-8\r\n"
        b"Content-Length: 0\r\n"
        b"X-Image-Meta-Id: " + IMAGE_ID.encode() + b"\r\n"
        b"X-Image-Meta-Status: active\r\n"
        b"X-Image-Meta-Name: " + name + b"\r\n"
        b"X-Image-Meta-Property-Note: " + name + b"\r\n"
        b"\r\n"
    )


class RawServer:
    """Answers every request on a connection with the same raw bytes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await reader.readuntil(b"\r\n\r\n")) and not writer.is_closing():
                writer.write(self.payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    def __enter__(self) -> RawServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(params=sorted(NAMES))
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, RawServer]]:
    with RawServer(_response(NAMES[request.param])) as server:
        yield request.param, server


def test_non_ascii_header_bytes_come_out_as_the_intended_text(served) -> None:
    kind, server = served
    df = fetch_images([IMAGE_ID], endpoint=f"http://127.0.0.1:{server.port}", token="t")
    expected = "niño-镜像" if kind == "utf8" else "niño"
    assert df.loc[IMAGE_ID, "http_status"] == 200
    assert df.loc[IMAGE_ID, "name"] == expected
    assert df.loc[IMAGE_ID, "properties"] == {"note": expected}
