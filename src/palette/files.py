"""Writing files atomically, with errors that name the path and the reason.

    write_atomic(Path("out/a.png"), lambda temporary: image.save(temporary, format="PNG"))

A reader, or a crash, sees the old file or the new one and never a part: the bytes go to a temporary file in the
same folder, which then replaces the target (os.replace is atomic within a file system). On any error the temporary
file is removed and an existing target is left untouched.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.EISDIR: "a folder of that name exists",
}


class OutputError(OSError):
    """A file that cannot be written; the message names it and says why."""


def _reason(error: OSError, path: Path) -> str:
    """Why writing `path` failed, in words; a file standing where a folder should be is named."""
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                return f"{ancestor} is a file, not a folder"
            break
    if isinstance(error, FileNotFoundError):
        return f"its folder {path.parent} does not exist"
    return REASONS.get(error.errno, error.strerror or str(error))


def ensure_folder(path: str | Path) -> None:
    """Create the folders above `path`, or raise OutputError naming `path` and what is in the way."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{path}: cannot create its folder: {_reason(error, path)}") from error


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary)` for a temporary file beside `path`, then move it onto `path`.

    The temporary file gets the permissions a plain write would (mkstemp makes it 0600). An OSError becomes an
    OutputError naming `path`; any other error is re-raised. Either way nothing is left behind.
    """
    path = Path(path)
    temporary: Path | None = None
    try:
        descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(descriptor)
        temporary = Path(name)
        write(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except OSError as error:
        raise OutputError(f"{path}: cannot write: {_reason(error, path)}") from error
    finally:
        if temporary is not None and temporary.exists():
            temporary.unlink()
