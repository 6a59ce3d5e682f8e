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


ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
# A citation of a file outside the repository, or of the tracker by number.
OUTSIDE_CITATION = re.compile(r"DESIGN\.md|\bissues? #?[0-9]", re.IGNORECASE)


def test_the_code_cites_only_files_in_the_repository() -> None:
    cited = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "imgframe").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE_CITATION.search(line) and "aiohttp issue" not in line  # upstream's tracker
    ]
    assert not cited, "\n".join(cited)
    assert OUTSIDE_CITATION.search("see DESIGN.md") and OUTSIDE_CITATION.search("(issue 5)")


def test_files_the_code_cites_exist() -> None:
    for path in sorted((ROOT / "imgframe").rglob("*.py")):
        for cited in re.findall(
            r"\b((?:docs|benchmarks|tests)/[\w./-]+\.(?:md|py))", path.read_text()
        ):
            assert (ROOT / cited).is_file(), f"{path.relative_to(ROOT)} cites {cited}"


def test_architecture_maps_every_module() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    map_block = text.split("## Module map", 1)[1].split("```")[1]
    modules = {p.name for p in (ROOT / "imgframe").glob("*.py")} - {"__main__.py"}
    missing = sorted(m for m in modules if not re.search(rf"^\s+{re.escape(m)}\s", map_block, re.M))
    assert not missing, f"docs/ARCHITECTURE.md's module map lacks {missing}"
    for status in ("0", "1", "2", "3", "4", "5", "130 / 143", "141"):
        assert f"\n| {status} |" in text, status


def test_every_warning_derives_from_imgframe_warning_and_is_drawn() -> None:
    from imgframe import errors

    warning_names = [n for n in imgframe.__all__ if n.endswith("Warning")]
    assert {"FleetWarning", "ImgframeParseWarning", "CheckpointWarning"} <= set(warning_names)
    for name in warning_names:
        cls = getattr(imgframe, name)
        assert issubclass(cls, imgframe.ImgframeWarning) and issubclass(cls, UserWarning), name
        assert cls.__module__ == "imgframe.errors" and name in (errors.__doc__ or ""), name
    from imgframe.fleet import FleetWarning  # the old home still works

    assert FleetWarning is imgframe.FleetWarning
