"""How many glibc malloc arenas a screening process keeps.

glibc gives each new thread an arena of its own, up to 8 per core, and an arena keeps what was
freed in it for reuse instead of returning it to the system. A screening run allocates from the
decode thread, DALI's workers and the inference runtime's threads, images of every size: after
2,000 files of the 10,000-file archive, ``malloc_info`` showed 9 arenas holding ~290 MB of free
memory on 2 cores. With two, densenet121's peak RSS over those files fell from 1589 to 1350 MiB at
the same speed (benchmarks/README.md, session 8). One arena per core keeps that bound on larger
machines without making threads queue for one: no more threads than cores run at once.
"""
from __future__ import annotations

import ctypes
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
