"""Interrupting a real Jupyter kernel during fetch_images stops the fetch and keeps its rows.

In a kernel, ``fetch_images`` runs on a helper thread (the kernel's own event loop is
running); the interrupt raises ``KeyboardInterrupt`` in the kernel's main thread, which
must cancel the helper's fetch rather than leave it sending every request. The emulator
runs in this test process, so its request log (arrival times on this process's clock)
shows when the sending stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from imgframe import checkpoint as ckpt
from imgframe.testing import ADMIN_TOKEN, Faults, GlanceEmulator, make_fleet

pytest.importorskip("ipykernel", reason="the Jupyter interrupt test needs ipykernel")
manager = pytest.importorskip("jupyter_client.manager", reason="needs jupyter_client")

pytestmark = pytest.mark.notebook  # a Jupyter kernel, interrupted as the stop button does

N_IDS = 50_000
STOP_WITHIN = 2.0  # seconds from the interrupt until no request arrives any more


def run_cell(client: Any, code: str, timeout: float) -> tuple[dict[str, Any], str]:
    """Execute ``code``; its execute_reply content and its printed output."""
    printed: list[str] = []

    def keep(message: dict[str, Any]) -> None:
        if message["msg_type"] == "stream":
            printed.append(message["content"]["text"])

    reply = client.execute_interactive(code, timeout=timeout, output_hook=keep)
    return reply["content"], "".join(printed)


def wait_for_reply(client: Any, msg_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the interrupted cell did not end"
        message = client.get_shell_msg(timeout=left)
        if message["parent_header"].get("msg_id") == msg_id:
            return message["content"]


def heads(emu: GlanceEmulator) -> list[Any]:
    return [r for r in emu.request_log if r.method == "HEAD"]


@pytest.mark.timeout(400)
def test_a_kernel_interrupt_stops_the_fetch_and_keeps_the_fetched_rows(tmp_path: Path) -> None:
    fleet = make_fleet(N_IDS, seed=61)
    ids = [image.id for image in fleet.images]
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    folder = tmp_path / "ckpt"
    # 10 ms per answer: 50,000 ids take well over 15 s, the interrupt comes after ~3 s.
    with GlanceEmulator(fleet, faults=Faults(latency=0.01)) as emu:
        fetch = (
            f"df = imgframe.fetch_images(ids, endpoint={emu.url!r}, token={ADMIN_TOKEN!r}, "
            f"checkpoint={str(folder)!r}, progress=False)"
        )
        kernel = manager.KernelManager(kernel_name="python3")
        kernel.start_kernel(cwd=str(tmp_path))
        client = kernel.client()
        try:
            client.start_channels()
            client.wait_for_ready(timeout=60)
            reply, _ = run_cell(
                client, "import json, imgframe\nids = json.load(open('ids.json'))", timeout=60
            )
            assert reply["status"] == "ok", reply

            msg_id = client.execute(fetch)
            deadline = time.monotonic() + 60
            while len(heads(emu)) < 3000:
                assert time.monotonic() < deadline, "the fetch did not start"
                time.sleep(0.05)
            interrupted = time.monotonic()
            kernel.interrupt_kernel()
            reply = wait_for_reply(client, msg_id, timeout=60)
            ended = time.monotonic() - interrupted
            assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply

            # Sample the request count: flat from STOP_WITHIN seconds after the interrupt.
            time.sleep(max(0.0, interrupted + STOP_WITHIN - time.monotonic()))
            at_bound = len(heads(emu))
            time.sleep(1.5)
            later = heads(emu)
            assert len(later) == at_bound, "requests were still sent after the interrupt"
            assert not [r for r in later if r.t > interrupted + STOP_WITHIN]
            assert len(later) < N_IDS / 2  # far from "all requests sent anyway"
            answered = {r.image_id for r in later if r.status == 200}

            stored = ckpt.read_manifest(folder).rows
            assert 0 < stored <= len(answered)
            with ckpt.Checkpoint.open(folder, ckpt.read_manifest(folder)) as store:
                kept = set(store.load().index)
            assert kept <= answered and len(answered - kept) <= 32  # those in flight

            emu.reset_log()
            reply, printed = run_cell(
                client,
                fetch + "\nprint(len(df), list(df.index) == ids, (df.http_status == 200).all())",
                timeout=300,
            )
            assert reply["status"] == "ok", reply
            assert printed.split() == [str(N_IDS), "True", "True"], printed
            resent = [r.image_id for r in heads(emu)]
            assert sorted(resent) == sorted(set(ids) - kept)  # only the missing ids
        finally:
            client.stop_channels()
            kernel.shutdown_kernel(now=True)
    assert ended < STOP_WITHIN + 3, f"the cell ended {ended:.1f} s after the interrupt"
    print(f"interrupt -> cell ended {ended:.2f} s, {stored:,} rows kept")
