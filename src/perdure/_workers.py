"""Worker identity and liveness: who is this process, and which other workers are gone.

A worker's ``host`` names the machine and its process namespace (hostname plus the pid
namespace's inode), so a pid check is only trusted between workers that really share a pid
space: containers that share a hostname but not a pid namespace never judge each other dead by
pid, only by their heartbeat's expiry.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable

from .store import WorkerRow


def this_worker() -> WorkerRow:
    """A new worker identity for this process."""
    return WorkerRow(uuid.uuid4().hex, host_identity(), os.getpid())


def host_identity() -> str:
    """The hostname, plus the pid namespace where the platform exposes one."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/pidns:{namespace}"


def dead_workers(workers: Iterable[WorkerRow], me: WorkerRow) -> list[str]:
    """Workers known to be gone: on this host, with no live process behind their pid."""
    return [
        w.id for w in workers if w.id != me.id and w.host == me.host and not process_alive(w.pid)
    ]


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True
