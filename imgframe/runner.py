"""Run a fetch's coroutine from blocking code: a script, a Jupyter cell, the CLI.

:func:`run_sync` is what the blocking public functions (:func:`imgframe.fetch_images`,
:func:`imgframe.fetch_fleet`, :func:`imgframe.list_image_ids`) run their async forms
with, whether or not an event loop is already running in the calling thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable
from typing import Any

__all__ = ["INTERRUPT_WAIT_SECONDS", "run_sync"]


#: How long an interrupted :func:`run_sync` waits for its helper thread's fetch to stop
#: and write its checkpoint before raising ``KeyboardInterrupt`` anyway.
INTERRUPT_WAIT_SECONDS = 30.0


def run_sync(coroutine: Awaitable[Any]) -> Any:
    """Run ``coroutine`` to completion from blocking code, even inside a running loop.

    In a plain script it runs on a fresh event loop (uvloop when installed); Ctrl-C
    cancels it (asyncio.Runner's own handling) and raises ``KeyboardInterrupt`` once
    it has unwound. Inside a running loop (a Jupyter cell) it runs on a helper thread
    with its own loop, because a loop cannot be re-entered and nest_asyncio patches
    asyncio globally; a ``KeyboardInterrupt`` in the waiting thread (a kernel interrupt)
    cancels the helper's task, waits up to :data:`INTERRUPT_WAIT_SECONDS` for it to
    unwind (a fetch writes its checkpoint) and is then raised.

    Examples
    --------
    >>> async def answer() -> int:
    ...     return 42
    >>> run_sync(answer())
    42
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_in_new_loop(coroutine)
    helper = _HelperLoop(coroutine)
    helper.thread.start()
    try:
        helper.done.wait()
    except KeyboardInterrupt:
        helper.cancel()
        # A second interrupt while waiting gives up on the wait, not on the cancel.
        helper.done.wait(INTERRUPT_WAIT_SECONDS)
        raise
    return helper.result()


class _HelperLoop:
    """``coroutine`` as the main task of a fresh event loop on a daemon thread, which
    another thread can cancel (a daemon: an abandoned fetch never blocks exiting)."""

    def __init__(self, coroutine: Awaitable[Any]) -> None:
        self._coroutine = coroutine
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False
        self._lock = threading.Lock()
        self.done = threading.Event()
        self._outcome: tuple[bool, Any] = (False, None)
        self.thread = threading.Thread(target=self._run, name="imgframe-fetch", daemon=True)

    async def _main(self) -> Any:
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            cancelled = self._cancelled
        if cancelled:  # interrupted before the task existed
            close = getattr(self._coroutine, "close", None)
            if close is not None:
                close()
            raise asyncio.CancelledError
        return await self._coroutine

    def _run(self) -> None:
        try:
            self._outcome = (True, _run_in_new_loop(self._main()))
        except BaseException as exc:
            self._outcome = (False, exc)
        finally:
            self.done.set()

    def cancel(self) -> None:
        """Cancel the task from any thread (before it started: it will not start)."""
        with self._lock:
            self._cancelled = True
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(task.cancel)

    def result(self) -> Any:
        ok, value = self._outcome
        if ok:
            return value
        raise value


def _run_in_new_loop(coroutine: Awaitable[Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)  # type: ignore[arg-type]
