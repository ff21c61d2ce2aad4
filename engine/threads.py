"""One OpenMP team in the engine process: the scheduler's.

torch's CPU kernels (and oneDNN's) run on OpenMP, and GNU OpenMP (libgomp, which torch's
wheels ship) keeps one pool of worker threads per thread that ever ran a parallel region.
Once those pools together hold more threads than there are CPUs, libgomp stops spinning
at its barriers and puts every waiting thread to sleep instead. A decode step has a
barrier after each of its ~150 parallel regions, so the scheduler thread, whose model
calls are the only ones that matter, then sleeps and wakes ~160 times per step: on the
serving bench's model (2 cores, 16 rows) a decode step took 31-37 ms in a thread other
than the one that had loaded the model, against 22-25 ms with one team, at the same CPU
time.

So the engine keeps every other thread out of OpenMP: the model is loaded in a thread
that exits when it is done (its pool goes with it), and the threads that may touch
tensors besides the scheduler (the main thread, the executor threads that load adapters
into the CPU cache, the background loops) run torch on one thread (``serial_openmp``).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_local = threading.local()


@functools.lru_cache(maxsize=1)
def _omp_set_num_threads() -> Callable[[int], Any] | None:
    """libgomp's ``omp_set_num_threads`` as loaded in this process (torch's own copy), or
    None where torch runs on another OpenMP runtime, or none."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            return ctypes.CDLL(path).omp_set_num_threads
        except (OSError, AttributeError):
            continue
    return None


def serial_openmp() -> bool:
    """Run torch on one thread in the calling thread only (OpenMP's team size is a
    per-thread setting; torch's process-wide count and the scheduler's are untouched).
    Idempotent; returns whether this thread is now serial."""
    if getattr(_local, "serial", False):
        return True
    setter = _omp_set_num_threads()
    if setter is None:
        return False
    # torch sets a thread's OpenMP count from its own on that thread's first parallel
    # call; make that happen now so it cannot undo the setting below later.
    torch.get_num_threads()
    setter(1)
    _local.serial = torch.get_num_threads() == 1
    return _local.serial


def serial(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` made to run with ``serial_openmp`` in whatever thread calls it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        serial_openmp()
        return fn(*args, **kwargs)

    return wrapper


def in_passing_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a new thread that exits when it returns, so the OpenMP
    pool it creates (loading and packing the model) does not outlive it; its result, or
    its exception re-raised here."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as it was
            out["error"] = exc

    thread = threading.Thread(target=run, name="lorafleet-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
