"""Files that land whole or not at all.

Every file imgframe writes (tables, findings, reports, checkpoint parts, clouds.yaml)
goes through :func:`atomic_path`: the writer fills a temporary file in the same folder,
which is flushed to disk and renamed over the target only when the writer finished.
A crash, ``kill -9`` or a full disk at any moment leaves either the old file or the new
one, never a truncated one that a later ``imgframe audit`` would read without a word.

:func:`check_writable` answers, before a long fetch starts, whether its output could be
written at all (the folder exists and is writable), so that nothing is fetched for an
``-o nodir/out.parquet`` that fails only at the end.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from imgframe.errors import ConfigError

__all__ = ["TEMP_SUFFIX", "atomic_path", "check_writable"]

#: Temporary files end with this; readers of a folder (the checkpoint) skip them.
TEMP_SUFFIX = ".imgframe-tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary file is fsync'ed before the rename and the folder after it, so the new
    file survives a power cut too. On any error (or ``KeyboardInterrupt``) the temporary
    file is removed and ``path`` is left as it was.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("whole")
    >>> target.read_text()
    'whole'
    >>> try:
    ...     with atomic_path(target) as tmp:
    ...         _ = tmp.write_text("half")
    ...         raise RuntimeError("killed")
    ... except RuntimeError:
    ...     pass
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('whole', ['out.txt'])
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent or Path(".")
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates 0600; a table or report is as readable as any file the user makes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder or Path("."), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Raise :class:`~imgframe.ConfigError` unless a file could be written at ``path``.

    Checks that the folder exists, is a folder and is writable, and that ``path`` is not
    a folder itself. Creates nothing.

    Examples
    --------
    >>> check_writable("/no/such/folder/out.csv")
    Traceback (most recent call last):
    ...
    imgframe.errors.ConfigError: cannot write '/no/such/folder/out.csv': folder ... does not exist
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise ConfigError(f"cannot write {str(path)!r}: it is a folder")
    if not folder.exists():
        raise ConfigError(f"cannot write {str(path)!r}: folder '{folder}' does not exist")
    if not folder.is_dir():
        raise ConfigError(f"cannot write {str(path)!r}: '{folder}' is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {str(path)!r}: folder '{folder}' is not writable")
    if target.exists() and not os.access(target, os.W_OK) and not os.access(folder, os.W_OK):
        raise ConfigError(f"cannot write {str(path)!r}: permission denied")
    return target
