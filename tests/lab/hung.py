"""TEST DOUBLE of a file system that never answers (a user's FUSE mount whose daemon
hangs, a dead NFS server): the kernel's real FUSE, mounted on a ``/dev/fuse`` descriptor
that nobody serves, so every access below the mount point waits.

The descriptor is held by a ``sleep`` process only (a dead man's switch): when it ends —
at the ``with`` block's end, or after ``deadline`` seconds if the test itself is stuck —
the last reference closes, the kernel aborts the connection and every waiting access
fails (``ENOTCONN``).  So a test that finds the service (or itself) blocked for good
fails after ``deadline`` instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def hung_mount(path: Path, *, deadline: float = 600.0) -> Iterator[Path]:
    """``path`` (made here, removed after) with a file system below it that never answers."""
    path.mkdir()
    keeper: subprocess.Popen[bytes] | None = None
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        try:
            subprocess.run(["mount", "-i", "-t", "fuse.isvhung", "-o",
                            f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other",
                            "isvhung", str(path)], pass_fds=(fd,), check=True)
            keeper = subprocess.Popen(["sleep", str(deadline)], pass_fds=(fd,))
        finally:
            os.close(fd)
        yield path
    finally:
        if keeper is not None:
            keeper.kill()  # by its own PID: the connection is aborted
            keeper.wait()
            subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()
