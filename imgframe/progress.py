"""The progress bar of a fetch, shown only where someone can see it."""

from __future__ import annotations

import contextvars
import sys
from typing import Any

__all__ = ["PROGRESS_LABEL", "progress_bar", "someone_watching"]

#: Put in front of the progress bar's description; :func:`imgframe.fetch_fleet` sets it
#: to ``cloud/region`` in each target's task (a context variable: each task has its own).
PROGRESS_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "imgframe_progress_label", default=None
)


def progress_bar(progress: bool | None, total: int | None, api: str = "v1") -> Any:
    """A tqdm bar for a fetch of ``total`` rows (None: grows as a listing arrives), or
    None when ``progress`` is False, or None and nobody watches (:func:`someone_watching`);
    ``api`` names what is sent (``"listing"``: rows made from the listing)."""
    if progress is None:
        progress = someone_watching()
    if not progress:
        return None
    from tqdm.auto import tqdm

    desc = {"v1": "HEAD /v1/images", "v2": "GET /v2/images", "listing": "listing"}.get(
        api, "images"
    )
    label = PROGRESS_LABEL.get()
    if label:
        desc = f"{label}: {desc}"
    return tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True)


def someone_watching() -> bool:
    """A notebook kernel or a terminal on stderr: never CI logs or pipes."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    if type(shell).__name__ == "ZMQInteractiveShell":  # a Jupyter kernel, not just imported
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
