"""Private modes for the data dir and the files that hold secrets.

The database holds token hashes and encrypted HF tokens, `secret.key` decrypts them and
`admin-token` is a login: only the server's own user may read them. New files are created
private; files left world-readable by an earlier version are fixed when the server starts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
# The files of the data dir that hold secrets, or say something about them.
PRIVATE_FILES = (
    "modelhost.db",
    "modelhost.db-wal",
    "modelhost.db-shm",
    "modelhost.db-journal",
    "secret.key",
    "admin-token",
    "serve.lock",
)


def private_dir(path: Path) -> None:
    """Create `path` (and its parents) if missing, and make it 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _chmod(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Make `path` 0600, creating it empty if missing (before anything writes to it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    _chmod(path, FILE_MODE)


def secure_data_dir(data_dir: Path) -> None:
    """The data dir 0700 and each of its secret files that exists 0600."""
    private_dir(data_dir)
    for name in PRIVATE_FILES:
        path = data_dir / name
        if path.is_file():
            _chmod(path, FILE_MODE)


def _chmod(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except PermissionError:
        # Not ours (a shared mount, or another owner): say so rather than refuse to start.
        log.warning("cannot make %s private (mode %o): not its owner", path, mode)
