"""A lock file so two runs never write the same run directory at once."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from compress.errors import RunLocked


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` (O_EXCL) for the duration; a stale lock of a dead process is taken over.

    Raises:
        RunLocked: A live process on this host holds the lock.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            pid = int(holder.get("pid", 0) or 0)
            if holder.get("host") == me["host"] and pid and not _alive(pid):
                path.unlink(missing_ok=True)  # stale: its process is gone (kill -9)
                continue
            raise RunLocked(
                f"{run_dir}: another compress run (pid {pid or '?'} on {holder.get('host', '?')}) is using this run "
                f"directory; wait for it, or use --run-dir for a separate run (remove {path} only if that run is dead)"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
