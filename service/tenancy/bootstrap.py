"""The bootstrap admin key: the configured one, else the one kept in `data_dir/admin.key`, else a
new one written there (mode 0600), atomically, so replicas starting together agree on one."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from service.tenancy.keys import generate_key


@dataclass(frozen=True)
class AdminKey:
    key: str
    path: Path | None  # where it is kept, when generated
    generated: bool  # True only on the start that created it: say where it is then


ADMIN_KEY_WAIT_S = 5.0  # how long a start waits for another one that is writing admin.key


def bootstrap_admin_key(
    configured: str | None, data_dir: Path, *, wait_s: float = ADMIN_KEY_WAIT_S
) -> AdminKey:
    """The configured admin key, else the one kept in `data_dir/admin.key`, else a new one.

    Safe for replicas starting together on one shared data directory: the file is created with
    O_EXCL, so exactly one start generates the key and every other one reads that same key."""
    if configured:
        return AdminKey(configured, None, generated=False)
    path = data_dir / "admin.key"
    data_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            key = generate_key()
            if _create_exclusively(path, key + "\n"):
                return AdminKey(key, path, generated=True)
            continue  # another start created it first: read its key
        if key:
            return AdminKey(key, path, generated=False)
        if time.monotonic() < deadline:
            # empty: another start has just created it and is about to write its key into it
            time.sleep(0.01)  # waiting for that one write(), with a deadline
            continue
        # still blank: left by a start that died before writing (or made by hand); replace it
        with contextlib.suppress(FileNotFoundError):
            if not path.read_text(encoding="utf-8").strip():
                path.unlink()


def _create_exclusively(path: Path, text: str) -> bool:
    """Create `path` (mode 0600) holding `text`; False if it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)  # never leave an empty file for the next start to wait on
        raise
    os.close(fd)
    return True
