"""One user-facing error type for every dcx command.

``DcxError`` is a :class:`click.ClickException`, so a command that raises it prints
``Error: <message>`` on one line and exits with ``exit_code`` -- never a stack trace.
Library callers catch it like any exception.
"""
import click


class DcxError(click.ClickException):
    """A mistake the user can fix (bad path, foreign file, missing dependency)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
