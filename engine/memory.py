"""How a screening process manages its memory: glibc's malloc arenas, and Python's collector.

glibc gives each new thread an arena of its own, up to 8 per core, and an arena keeps what was
freed in it for reuse instead of returning it to the system. A screening run allocates from the
decode thread, DALI's workers and the inference runtime's threads, images of every size: after
2,000 files of the 10,000-file archive, ``malloc_info`` showed 9 arenas holding ~290 MB of free
memory on 2 cores. With two, densenet121's peak RSS over those files fell from 1589 to 1350 MiB at
the same speed (benchmarks/README.md, session 8). One arena per core keeps that bound on larger
machines without making threads queue for one: no more threads than cores run at once.

Python's cyclic garbage collector walks every object it tracks on each full collection: after
importing torch and dcx 187,000 of them, more once DALI and the runtime are in, all of which live
as long as the process. A full collection then took 0.11-0.13 s holding the GIL, during which the
decode thread's Python work waits too, and one fell into the start of a 300-file run; frozen, the
collector leaves them alone (resnet18 INT8, 300 files: 0.26 s of collection in the run, 0.06
frozen; benchmarks/README.md, session 11).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os

from dcx.core.files import usable_cores

_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def screening_arenas() -> int:
    """One arena per usable core, at least two."""
    return max(2, usable_cores())


def limit_malloc_arenas() -> bool:
    """Cap the arenas that threads started from now on may create at :func:`screening_arenas`;
    False where the C library is not glibc (no ``mallopt``) or the user set
    ``MALLOC_ARENA_MAX``, which then rules. Call before starting threads."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and mallopt(_M_ARENA_MAX, screening_arenas()) == 1


@contextlib.contextmanager
def imports_frozen():
    """Leave the objects that exist now (modules, classes, their constants) out of every garbage
    collection until the block ends; the block's own objects are collected as usual."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()  # a caller that goes on (a test, a notebook) gets its collector back whole
