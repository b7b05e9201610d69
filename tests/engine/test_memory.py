"""dcx-infer's cap on glibc malloc arenas, observed in glibc's own report (malloc_info), and its
frozen imports, observed through the collector."""
import ctypes
import gc
import os
import subprocess
import sys
import weakref

import pytest

from dcx.engine.memory import imports_frozen, screening_arenas

CHILD = r"""
import ctypes, re, sys, tempfile, threading
import numpy as np
from dcx.engine.memory import limit_malloc_arenas

print(limit_malloc_arenas() if sys.argv[1] == "limit" else None)
count = int(sys.argv[2])
together = threading.Barrier(count)

def allocate():
    kept = [np.ones(8000) for _ in range(20)]  # 64 KB each: from the thread's arena, not mmap
    together.wait()  # all alive at once: an exiting thread's arena would be handed to the next

threads = [threading.Thread(target=allocate) for _ in range(count)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(len(re.findall('<heap nr=', open(report.name).read())))
"""

needs_glibc = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_info"), reason="needs glibc (malloc_info)")


THREADS = screening_arenas() + 4  # more threads than the cap, fewer than glibc's 8 per core


def arenas_after_threads(mode: str, **env) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(THREADS)], capture_output=True, text=True,
                         check=True, env=environment).stdout.split()
    return out[0], int(out[1])


@needs_glibc
def test_threads_share_one_arena_per_core():
    assert arenas_after_threads("free") == ("None", THREADS + 1)  # glibc's default: one per thread, and main's
    assert arenas_after_threads("limit") == ("True", screening_arenas())


@needs_glibc
def test_the_users_malloc_arena_max_wins():
    assert arenas_after_threads("limit", MALLOC_ARENA_MAX="3") == ("False", 3)


class Node:
    """A weakly referable object that can sit in a reference cycle (only the collector frees one)."""


def cycle() -> weakref.ref:
    node = Node()
    node.self = node
    return weakref.ref(node)


def test_objects_made_before_the_run_are_left_out_of_its_collections():
    gc.collect()
    before = cycle()  # garbage already, but only a collection can tell
    with imports_frozen():
        during = cycle()
        gc.collect()
        assert during() is None  # the run's own garbage is collected as usual
        assert before() is not None  # what existed before the block is not even looked at
    gc.collect()
    assert before() is None  # and the collector has it back afterwards
