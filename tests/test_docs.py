"""The README stays true: its column table is the schema's, its commands exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import imgframe
from imgframe.schema import schema_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_column_table_is_generated_from_the_schema() -> None:
    assert schema_markdown() in README


def test_readme_gives_the_two_commands_and_make_has_them() -> None:
    first_screen = "\n".join(README.splitlines()[:20])
    assert "make demo" in first_screen and "make test" in first_screen
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_public_names_are_exported_and_documented() -> None:
    for name in imgframe.__all__:
        obj = getattr(imgframe, name)
        if callable(obj):
            assert obj.__doc__, name


def test_core_never_imports_testing_or_cli() -> None:
    core = ["schema", "parse", "fetch", "auth", "api", "io", "errors", "audits", "accessor",
            "report_html"]  # fmt: skip
    for module in core:
        tree = ast.parse((ROOT / "imgframe" / f"{module}.py").read_text())
        imported = [
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        ] + [
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        ]
        assert not [m for m in imported if m.startswith(("imgframe.testing", "imgframe.cli"))], (
            module
        )


def test_frame_level_modules_never_import_aiohttp() -> None:
    for module in ["audits", "accessor", "io", "report_html", "schema"]:
        tree = ast.parse((ROOT / "imgframe" / f"{module}.py").read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if m.startswith(("aiohttp", "imgframe.fetch"))], module
