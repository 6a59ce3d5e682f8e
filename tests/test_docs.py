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
            "report_html", "config", "glance", "http", "ids", "throttle", "runner", "progress",
            "listing", "fleet", "changes", "allow", "provenance", "history"]  # fmt: skip
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
    for module in ["audits", "accessor", "io", "report_html", "schema", "changes", "allow",
                   "provenance", "history"]:  # fmt: skip
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


# --- the import graph -------------------------------------------------------------------

PACKAGE = ROOT / "imgframe"
# The one exception list of the import checks: an offender, as the tests name it (an
# import edge "a -> b" left out of the cycle check, or a private name used across
# modules), and why it is allowed for now. It should be empty.
ALLOWED_IMPORTS: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imgframe_modules() -> dict[str, ast.Module]:
    return {
        _module_name(path): ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, ast.Module]) -> tuple[dict[str, set[str]], list[str]]:
    """Every imgframe module's imports of other imgframe modules (at module level and
    inside functions alike), and the private names used across modules."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private: list[str] = []

    def is_private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    for module, tree in modules.items():
        is_package = (PACKAGE.parent / (module.replace(".", "/") + "/__init__.py")).is_file()
        aliases: dict[str, str] = {}  # local name -> the imgframe module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] != "imgframe":
                        continue
                    graph[module].add(alias.name)
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        aliases["imgframe"] = "imgframe"
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(module, node, is_package)
                if source.split(".")[0] != "imgframe":
                    continue
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in modules:  # `from imgframe import checkpoint`
                        graph[module].add(submodule)
                        aliases[alias.asname or alias.name] = submodule
                        continue
                    graph[module].add(source)
                    if is_private(alias.name) and source != module:
                        private.append(f"{module}: from {source} import {alias.name}")
        for node in ast.walk(tree):
            # `imgframe.x._name` or `alias._name` where alias is an imgframe module.
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                dotted: list[str] = []
                value: ast.expr = node.value
                while isinstance(value, ast.Attribute):
                    dotted.insert(0, value.attr)
                    value = value.value
                if isinstance(value, ast.Name) and value.id in aliases:
                    target = ".".join([aliases[value.id], *dotted])
                    if target in modules and target != module:
                        private.append(f"{module}: {target}.{node.attr}")
        graph[module].discard(module)
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph, _ = _imports(_imgframe_modules())
    assert graph["imgframe.api"] and "imgframe.fetch" in graph["imgframe.api"]  # it looked
    edges = {f"{a} -> {b}" for a, targets in graph.items() for b in targets}
    for allowed in [edge for edge in ALLOWED_IMPORTS if " -> " in edge]:
        assert allowed in edges, f"ALLOWED_IMPORTS lists an import that is gone: {allowed}"
        source, target = allowed.split(" -> ")
        graph[source].discard(target)
    cycles = _cycles(graph)
    assert not cycles, "imgframe modules import each other: " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_no_private_name_is_used_across_modules() -> None:
    _, private = _imports(_imgframe_modules())
    allowed = {offender for offender in ALLOWED_IMPORTS if " -> " not in offender}
    offenders = sorted(set(private) - allowed)
    assert not offenders, "private names used across imgframe modules:\n" + "\n".join(offenders)
    stale = sorted(allowed - set(private))
    assert not stale, "ALLOWED_IMPORTS lists imports that are gone:\n" + "\n".join(stale)
    assert all(ALLOWED_IMPORTS.values()), "every allowed entry says why"


def test_the_import_checker_finds_cycles_and_private_names(tmp_path: Path) -> None:
    trees = {
        "imgframe.a": ast.parse("from imgframe.b import _hidden\n"),
        "imgframe.b": ast.parse("def f():\n    import imgframe.a as a\n    return a._x\n"),
    }
    graph, private = _imports(trees)
    assert _cycles(graph) == [["imgframe.a", "imgframe.b"]]
    assert private == ["imgframe.a: from imgframe.b import _hidden", "imgframe.b: imgframe.a._x"]
