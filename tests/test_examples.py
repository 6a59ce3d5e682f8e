"""The example scripts run offline with --demo, as a user would start them.

Each runs as ``__main__`` in this process (``runpy``, its own ``sys.argv``, the test's
folder as working directory), which is what ``python examples/<name>.py`` does minus the
interpreter start; one test starts a real process, for what only a process shows (the
exit status through ``sys.exit``, an interpreter that ends once the script is done).
"""

from __future__ import annotations

import io
import os
import runpy
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

import imgframe
from imgframe.testing import FLEET_NOW, make_fleet

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_example(capsys, monkeypatch, global_state) -> Callable[..., Ran]:
    """``run_example(name, *args, cwd=folder)`` runs ``examples/<name>`` as ``__main__``
    here, as ``python examples/<name> args`` would, without ``OS_AUTH_TOKEN``."""
    monkeypatch.delenv("OS_AUTH_TOKEN", raising=False)

    def run(name: str, *args: str, cwd: Path) -> Ran:
        script = str(EXAMPLES / name)
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", [script, *args])
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        capsys.readouterr()
        with global_state(f"examples/{name}"), pytest.raises(SystemExit) as exited:
            runpy.run_path(script, run_name="__main__")
        captured = capsys.readouterr()
        return Ran(_exit_status(exited.value.code), captured.out, captured.err)

    return run


def _exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` gives a process: None is 0, a message is 1."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def run_example_process(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "OS_AUTH_TOKEN"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=environment,
    )


def test_every_example_is_tested():
    scripts = {path.name for path in EXAMPLES.glob("*.py")}
    assert scripts == {"fetch_to_parquet.py", "audit_csv.py", "enumerate_and_fetch.py"}


@pytest.mark.parametrize("name", sorted(path.name for path in EXAMPLES.glob("*.py")))
def test_example_has_a_usage_docstring_and_help(name, tmp_path, run_example):
    result = run_example(name, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--demo" in result.stdout
    assert "Usage::" in (EXAMPLES / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(path.name for path in EXAMPLES.glob("*.py")))
def test_example_without_a_cloud_or_token_explains_what_is_missing(name, tmp_path, run_example):
    result = run_example(name, cwd=tmp_path)
    assert result.returncode == 2
    assert "--demo" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written before the arguments are checked


def test_fetch_to_parquet_demo_writes_every_id_with_the_unknown_one_failed(tmp_path, run_example):
    result = run_example("fetch_to_parquet.py", "--demo", "300", "-o", "f.parquet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = imgframe.read_parquet(tmp_path / "f.parquet")
    fleet = make_fleet(300, seed=7)
    assert df.index[:-1].tolist() == [image.id for image in fleet.images]
    assert df["http_status"].tolist() == [200] * 300 + [404]
    assert "301 images, 1 could not be read" in result.stdout


def test_audit_csv_demo_writes_findings_and_report_and_fails_on_high(tmp_path, run_example):
    result = run_example(
        "audit_csv.py", "--demo", "400", "-d", "out", "--fail-on", "high", cwd=tmp_path
    )
    assert result.returncode == 3, result.stderr  # the seeded fleet has public, unprotected images
    findings = imgframe.read_csv(tmp_path / "out" / "findings.csv")
    fleet = make_fleet(400, seed=11)
    public = findings[findings["rule"] == "public_unprotected"]
    assert set(public["image_id"]) == set(fleet.planted.public_unprotected)
    assert set(findings["rule"]) >= {"public_unprotected", "stale", "checksum_duplicates"}
    report = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<h2>Fleet summary</h2>" in report


def test_audit_csv_reads_a_csv_written_by_imgframe(tmp_path, run_example):
    fleet = make_fleet(50, seed=2)
    df = imgframe.frame_from_headers(
        [
            {"X-Image-Meta-Id": image.id, "X-Image-Meta-Status": image.status}
            for image in fleet.images
        ]
    )
    df["http_status"] = pd.array([200] * len(df), dtype="Int64")
    df.img.to_csv(tmp_path / "fleet.csv")
    now = FLEET_NOW.isoformat()
    result = run_example("audit_csv.py", "fleet.csv", "-d", "out", "--now", now, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "50 images" in result.stdout
    assert (tmp_path / "out" / "report.html").exists()


def test_enumerate_and_fetch_demo_pages_past_short_pages_to_the_whole_catalogue(
    tmp_path, run_example
):
    # The demo server clamps pages to 300 images; asking for 1000 makes every page short.
    result = run_example(
        "enumerate_and_fetch.py",
        "--demo",
        "700",
        "--page-size",
        "1000",
        "-o",
        "f.csv",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    listable = {image.id for image in make_fleet(700, seed=5).images if not image.deleted}
    df = imgframe.read_csv(tmp_path / "f.csv")
    assert set(df.index) == listable
    assert (df["http_status"] == 200).all()
    assert f"listed {len(listable):,} images" in result.stdout


def test_enumerate_and_fetch_lists_deleted_images_when_asked(tmp_path, run_example):
    result = run_example(
        "enumerate_and_fetch.py", "--demo", "300", "--deleted", "-o", "f.parquet", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    df = imgframe.read_parquet(tmp_path / "f.parquet")
    assert set(df.index) == {image.id for image in make_fleet(300, seed=5).images}


def test_an_example_started_as_a_script_exits_with_its_status_when_done(tmp_path):
    # The one real process: `python examples/...` as a user types it, the exit status
    # from `sys.exit(main())`, and an interpreter that ends once the emulator has stopped.
    result = run_example_process("fetch_to_parquet.py", "--demo", "40", "-o", "f.parquet",
                                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "41 images, 1 could not be read" in result.stdout
    df = imgframe.read_parquet(tmp_path / "f.parquet")
    assert df.index[:-1].tolist() == [image.id for image in make_fleet(40, seed=7).images]
