"""The one error type of dcx, and how a command line reports it.

``DcxError`` is a plain exception: library code, Ray actors and DALI fallbacks raise and catch
it like any other. A mistake the user can fix carries a one-line ``message`` and the
``exit_code`` a command should end with; :class:`Command` and :class:`Group` (click classes
every dcx command uses) turn it into one ``Error: <message>`` line, never a stack trace.
"""
from __future__ import annotations

import contextlib

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


class _ReportsDcxErrors:
    """Mixed into click's Command and Group: parsing and running report DcxErrors as one line."""

    def make_context(self, *args, **kwargs):
        with reported_as_cli_error():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with reported_as_cli_error():
            return super().invoke(ctx)


class Command(_ReportsDcxErrors, click.Command):
    """A click command whose DcxErrors end it with one ``Error:`` line."""


class Group(_ReportsDcxErrors, click.Group):
    """A click group whose commands (and the group itself) report DcxErrors as :class:`Command` does."""

    command_class = Command
