"""``import nvidia.dali`` at half its cost: without the signatures and docstrings of its operators.

Importing DALI 2.4 generates a Python class and an ``fn`` function for each of its ~180 public
operators, and for each a ``__signature__`` (``nvidia.dali.ops._signatures._call_signature``,
which parses every argument's default with ``ast.literal_eval``) and docstrings
(``nvidia.dali.ops._docs``): under cProfile 0.21 and 0.10 of the import's 0.40 s; without a
profiler the import costs 0.23 CPU-s with them and 0.09-0.12 without. They serve ``help()`` and
IDEs, never a pipeline, yet the import holds the GIL and comes before the first image is
decoded: on 2 CPU cores the first scores of a 300-file run came 0.24 s sooner without them
(benchmarks/README.md, session 14).

While DALI imports, those three generators return nothing (the functions keep their plain
``(*inputs, **kwargs)`` signatures and empty docstrings); the real generators are put back
afterwards, so anything later that asks DALI for them gets them. A DALI whose private modules
no longer have these names imports the ordinary way: only what exists is stubbed.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys

#: private module -> {generator: what it returns while DALI imports}
GENERATORS = {
    "nvidia.dali.ops._signatures": {"_call_signature": None},
    "nvidia.dali.ops._docs": {"_docstring_generator_fn": "", "_docstring_generator_call": ""},
}


def import_dali():
    """``nvidia.dali``, imported without operator signatures and docstrings if it was not yet
    (imported, or importing in another thread: then the import only waits for it)."""
    with contextlib.nullcontext() if "nvidia.dali" in sys.modules else _stubbed_generators():
        import nvidia.dali
    return nvidia.dali


@contextlib.contextmanager
def _stubbed_generators():
    """:data:`GENERATORS` stubbed in the modules imported meanwhile, put back on leaving."""
    finder = _StubbingFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        finder.restore()


def stub_generators(module, stubs: dict) -> dict:
    """Replace ``module``'s generators named in ``stubs`` by functions returning the stub value;
    return the originals (by name) of those it had."""
    originals = {}
    for name, value in stubs.items():
        if callable(getattr(module, name, None)):
            originals[name] = getattr(module, name)
            setattr(module, name, lambda *args, _value=value, **kwargs: _value)
    return originals


class _StubbingFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`GENERATORS` as the normal finder does, and stubs their
    generators right after each executes (DALI imports them before generating operators)."""

    def __init__(self):
        self._originals: list[tuple[object, dict]] = []

    def find_spec(self, fullname, path, target=None):
        if fullname not in GENERATORS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_stub(module):
            exec_module(module)
            self._originals.append((module, stub_generators(module, GENERATORS[fullname])))

        spec.loader.exec_module = exec_and_stub
        return spec

    def restore(self) -> None:
        for module, originals in self._originals:
            for name, function in originals.items():
                setattr(module, name, function)
        self._originals.clear()
