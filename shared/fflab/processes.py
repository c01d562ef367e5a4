"""Process helpers of the service: is a process alive, a child that dies with its
parent (``fflab serve``'s worker), and a worker that yields the CPU."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
AUTOGROUP = "/proc/self/autogroup"


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


def lower_priority(nice: int, autogroup: str = AUTOGROUP) -> bool:
    """Add ``nice`` to this process's niceness, so that it yields the CPU to the API.

    With Linux's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``,
    on by default in most distributions) niceness counts only between the processes
    of one session: a worker that leads a session of its own (started with
    ``setsid``, by a supervisor, or by ``start_new_session``) competes with the
    API's session as an equal group whatever its niceness, and takes a core's worth
    of a loaded machine. Such a worker also lowers its session group's priority
    (its own group: only its children share it). A worker inside another process's
    session (``fflab serve``'s) leaves that group alone, since the API is in it.
    Returns whether the group's priority was lowered.
    """
    if nice <= 0:
        return False
    os.nice(nice)
    if os.getsid(0) != os.getpid():
        return False
    try:
        with open(autogroup, "r+") as group:
            current = int(group.read().split("nice", 1)[1])
            group.seek(0)
            group.write(str(min(19, current + nice)))
    except (OSError, ValueError, IndexError):  # no autogroup here (another kernel or OS)
        return False
    return True
