"""Threads: how many lstmx's runs use, and BLAS held to one in each.

A run uses two threads where it gains from them (LSTM._split and friends):
two kernel jobs at once through _lstm.run_pair, the second one on lstmx's
worker thread (see _cell.c), with the GIL released throughout.
set_num_threads(1) keeps every run on the calling thread.

Each of the two threads holds scipy's OpenBLAS to one thread of its own,
with OpenBLAS's thread-local setting (openblas_set_num_threads_local,
OpenBLAS >= 0.3.27): two threads each calling a multithreaded OpenBLAS
oversubscribe the cores, and OpenBLAS's workers spin for a while after each
call, taking the core the other job needs. Measured on the seed-000
network, N=1, T=200, 2 cores, when each step's product still called BLAS:
44 ms with OpenBLAS's default 2 threads against 31 ms held to one; today
the projections and weight gradients are what call BLAS. Where the setting is not available (another
BLAS, an older OpenBLAS), nothing is changed.
"""
import contextlib
import ctypes
import glob
import os
import warnings

import numpy as np


def _threads_from_environment():
    value = os.environ.get("LSTMX_NUM_THREADS")
    if value is None:
        return 2
    try:
        n = int(value)
        if n < 1:
            raise ValueError
    except ValueError:
        warnings.warn(f"LSTMX_NUM_THREADS={value!r} is not a positive integer: using 2 threads",
                      RuntimeWarning, stacklevel=2)
        return 2
    return min(n, 2)


_num_threads = _threads_from_environment()


def set_num_threads(n):
    """Use at most n threads (1 or more; lstmx uses 2 at most) in every
    network's runs from now on. The default is 2, or the environment
    variable LSTMX_NUM_THREADS. One thread is the better choice where other
    processes keep the cores busy: a recurrence split between two threads
    waits for both at every step (small_infer with a busy process on one of
    two cores, median: 7-12 ms on two threads, 1.8-2.6 ms on one)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    _num_threads = min(int(n), 2)


def get_num_threads():
    """The number of threads that lstmx's runs use (1 or 2)."""
    return _num_threads


def _read_l2_bytes(root="/sys/devices/system/cpu/cpu0/cache"):
    """Size in bytes of the L2 cache of CPU 0 (Linux's sysfs), or None."""
    for index in sorted(glob.glob(os.path.join(root, "index*"))):
        try:
            with open(os.path.join(index, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(index, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(index, "size")) as f:
                size = f.read().strip()
        except OSError:
            continue
        if level != "2" or kind not in ("Unified", "Data"):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:].upper(), 1)
        digits = size[:-1] if scale != 1 else size
        if digits.isdigit() and int(digits) > 0:
            return int(digits) * scale
    return None


_l2_bytes = _read_l2_bytes()


def l2_cache_bytes():
    """A core's L2 cache in bytes, as Linux reports it, or None where it
    does not (then LSTM._split_recurrence keeps its default)."""
    return _l2_bytes


def _find_set_local():
    """openblas_set_num_threads_local of the OpenBLAS scipy loaded, or None."""
    try:
        import scipy
    except ImportError:  # pragma: no cover - scipy is a dependency
        return None
    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
            fn = lib.openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    return None


_set_local = _find_set_local()


@contextlib.contextmanager
def blas_held():
    """Hold this thread's BLAS to one thread while the block runs: lstmx's
    calls run two threads of their own where they gain from them, and
    OpenBLAS workers left spinning by a GEMM of the calling thread (the
    head's, say) would take a core from them (small_train: 41% of the
    samples in blas_thread_server)."""
    if _set_local is None:
        yield
        return
    previous = _set_local(1)
    try:
        yield
    finally:
        _set_local(previous)
