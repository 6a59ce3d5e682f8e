"""A small aiohttp app served on a free 127.0.0.1 port from a daemon thread.

The lifecycle the project's own test servers share (the fake Keystone, the Nova/Cinder
emulator): a subclass adds its routes in :meth:`LocalServer.routes`; :meth:`start`
returns once the socket is bound and ``url`` is set, :meth:`stop` closes the server and
joins its thread; both are bounded in time.
"""

from __future__ import annotations

import asyncio
import threading
from typing import ClassVar, Self

from aiohttp import web

__all__ = ["LocalServer"]

START_SECONDS = 10.0  # start() and stop() wait at most this long


class LocalServer:
    """Base of an in-process HTTP server on ``127.0.0.1``.

    Examples
    --------
    >>> async def hello(request):
    ...     return web.Response(text="hi")
    >>> class Hello(LocalServer):
    ...     def routes(self, app):
    ...         app.router.add_get("/", hello)
    >>> import urllib.request
    >>> with Hello() as server:
    ...     urllib.request.urlopen(server.url + "/").read()
    b'hi'
    """

    #: How the server is named in the error when it does not start.
    what: ClassVar[str] = "the test server"
    #: Seconds the runner gives open connections when stopping (aiohttp's default: 60).
    shutdown_timeout: ClassVar[float] = 60.0

    def __init__(self) -> None:
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def routes(self, app: web.Application) -> None:
        """Add the server's routes to ``app``."""
        raise NotImplementedError

    def start(self) -> Self:
        """Serve on a free 127.0.0.1 port from a thread of its own."""
        ready = threading.Event()

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            app = web.Application()
            self.routes(app)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        self._thread.start()
        if not ready.wait(START_SECONDS):
            raise RuntimeError(f"{self.what} did not start within {START_SECONDS:g} s")
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(START_SECONDS)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
