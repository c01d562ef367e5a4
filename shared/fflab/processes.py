"""Process helpers of the service: is a process alive, and a child that dies with
its parent (``fflab serve``'s worker)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this machine (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: kill(0) said it exists


def die_with_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    """Make this process end when its parent ``parent_pid`` does. Linux: the kernel
    sends SIGKILL when the parent thread that started this process ends
    (prctl PR_SET_PDEATHSIG). Elsewhere, and in case the parent ended before the
    prctl took effect, a daemon thread checks every ``interval_s`` that the parent
    is still this process's parent and kills this process otherwise. SIGKILL, not
    SIGTERM: a worker's warm shutdown would finish the run it is training first."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as error:  # not Linux: the watch below suffices
        log.info("prctl(PR_SET_PDEATHSIG) unavailable (%s); watching the parent process instead", error)

    def orphaned() -> bool:
        return os.getppid() != parent_pid

    if orphaned():  # the parent ended before the prctl
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while not orphaned():
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="fflab-parent-watch", daemon=True).start()
