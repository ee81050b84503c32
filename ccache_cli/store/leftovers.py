"""What killed writers leave in a store's tmp/, told apart from what live ones are
still writing: staging folders (each names its owner process in STAGING_OWNER),
folders of removed entries being deleted (REMOVED_PREFIX) and the temporary files
of the indexes readers write (index.py, usage_totals.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from ccache_cli.store import index, owners, usage_totals

UNNAMED_AFTER_S = 60  # a staging folder still without its owner file was left by a killed writer
REMOVED_PREFIX = "removed-"  # tmp/ folders being deleted: entries rm and gc removed, staging done with
STAGING_OWNER = ".owner"


def find(tmp_dir: Path, other_hosts_after_s: float) -> tuple[Path, ...]:
    """Staging folders whose process has ended (or, written on another host, untouched
    for `other_hosts_after_s`), folders of removed entries that `rm` or `gc` did not
    finish deleting, and index files (index.py, usage_totals.py) a killed reader was
    writing."""
    try:
        names = sorted(os.listdir(tmp_dir))
    except OSError:
        return ()
    now = time.time()
    found = []
    for name in names:
        folder = tmp_dir / name
        if name.startswith(REMOVED_PREFIX):
            found.append(folder)
            continue
        if name.startswith((index.TEMP_PREFIX, usage_totals.TEMP_PREFIX)):  # an index's write that was killed
            if now - _mtime(folder, now) > UNNAMED_AFTER_S:
                found.append(folder)
            continue
        if not name.startswith("stage-"):
            continue
        try:
            alive = owners.owner_alive((folder / STAGING_OWNER).read_text())
            abandoned = alive is False or (alive is None and now - folder.stat().st_mtime > other_hosts_after_s)
        except FileNotFoundError:  # killed before it named its owner, or removed meanwhile
            abandoned = now - _mtime(folder, now) > UNNAMED_AFTER_S
        except OSError:
            continue
        if abandoned:
            found.append(folder)
    return tuple(found)


def remove(path: Path) -> None:
    """Delete a leftover (a folder, or an index's temporary file), whatever is left of it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _mtime(path: Path, default: float) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return default
