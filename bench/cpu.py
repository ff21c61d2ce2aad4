"""CPU time of a process tree, for the benches' "CPU per request / per token" columns:
steadier than wall time on a machine shared with other work."""

from __future__ import annotations

import psutil


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants (alive now)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def postgres_cpu_seconds() -> float:
    """User + system CPU seconds of this machine's PostgreSQL servers so far: every live
    ``postgres`` process, plus what each postmaster has reaped from backends that already
    exited (their time would otherwise leave with them: a run that opens connections, or a
    pool that churns, reads low). Other databases' work on the machine counts too."""
    servers = [p for p in psutil.process_iter(["name", "ppid"]) if p.info["name"] == "postgres"]
    pids = {p.pid for p in servers}
    total = 0.0
    for proc in servers:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
        if proc.info["ppid"] not in pids:  # a postmaster: its children are the backends
            total += t.children_user + t.children_system
    return total
