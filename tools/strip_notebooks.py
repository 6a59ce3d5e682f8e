"""Strip outputs, execution counts and saved widget state from notebooks before committing.

Usage::

    .venv/bin/python tools/strip_notebooks.py              # every notebooks/*.ipynb, in place
    .venv/bin/python tools/strip_notebooks.py --check      # exit 1 if any needs stripping
    .venv/bin/python tools/strip_notebooks.py path/to/a.ipynb ...

Notebooks are committed without outputs: diffs stay readable, no fleet data (image
names, owners, a local emulator's port) ends up in git, and ``tests/test_notebooks.py``
executes them from scratch anyway.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# Cell metadata Jupyter adds while running (timings, scroll and collapse state).
VOLATILE_CELL_METADATA = ("execution", "collapsed", "scrolled", "jp-MarkdownHeadingCollapsed")


def strip(notebook: nbformat.NotebookNode) -> bool:
    """Strip ``notebook`` in place; return True when anything changed."""
    changed = notebook.metadata.pop("widgets", None) is not None
    for cell in notebook.cells:
        for key in VOLATILE_CELL_METADATA:
            changed |= cell.metadata.pop(key, None) is not None
        if cell.cell_type != "code":
            continue
        if cell.outputs or cell.execution_count is not None:
            cell.outputs = []
            cell.execution_count = None
            changed = True
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default notebooks/*)")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if unstripped")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(NOTEBOOKS.glob("*.ipynb"))
    dirty = []
    for path in paths:
        notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        if strip(notebook):
            dirty.append(path)
            if not args.check:
                nbformat.write(notebook, path)
    verb = "needs stripping" if args.check else "stripped"
    for path in dirty:
        print(f"{verb}: {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
