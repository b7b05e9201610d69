"""The one error type of dcx, and how a command line reports it and ends.

``DcxError`` is a plain exception: library code, Ray actors and DALI fallbacks raise and catch
it like any other. A mistake the user can fix carries a one-line ``message`` and the
``exit_code`` a command should end with; :class:`Command` and :class:`Group` (click classes
every dcx command uses) turn it into one ``Error: <message>`` line, never a stack trace.

A command's process also ends without the interpreter's last garbage collection
(:func:`skip_final_collection`): with PyTorch loaded, that pass alone kept a finished
``dcx-infer`` alive 0.5 s longer.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import gc

import click


class DcxError(Exception):
    """A mistake the user can fix (bad path, foreign file, missing dependency)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # keeps exit_code across processes (Ray workers, multiprocessing)
        return type(self), (self.message, self.exit_code)


@contextlib.contextmanager
def reported_as_cli_error():
    """Re-raise a :class:`DcxError` as the click exception that prints it and sets the exit code."""
    try:
        yield
    except DcxError as exc:
        error = click.ClickException(exc.message)
        error.exit_code = exc.exit_code
        raise error from exc


@functools.cache
def skip_final_collection() -> None:
    """At interpreter exit, after the exit handlers of what the command loaded (registered later,
    they run first), hide every object from the collector: the interpreter's last collection
    then has nothing to walk. Objects are still freed as their references go (files closed,
    buffers flushed); only garbage in reference cycles is left to the operating system, as
    everything is at exit. Once per process."""
    atexit.register(gc.freeze)


class _DcxCommandLine:
    """Mixed into click's Command and Group: parsing and running report DcxErrors as one line;
    the process ends without a last collection."""

    def main(self, *args, **kwargs):
        skip_final_collection()
        return super().main(*args, **kwargs)

    def make_context(self, *args, **kwargs):
        with reported_as_cli_error():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with reported_as_cli_error():
            return super().invoke(ctx)


class Command(_DcxCommandLine, click.Command):
    """A click command whose DcxErrors end it with one ``Error:`` line."""


class Group(_DcxCommandLine, click.Group):
    """A click group whose commands (and the group itself) report DcxErrors as :class:`Command` does."""

    command_class = Command
