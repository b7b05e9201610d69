"""dcx.core.errors: a plain exception for the library, one ``Error:`` line at every command line."""
from __future__ import annotations

import pickle

import click
import pytest
from click.testing import CliRunner

from dcx.core.errors import Command, DcxError, Group


def test_dcx_error_is_a_library_exception_not_a_cli_type():
    assert not issubclass(DcxError, click.ClickException)
    error = pickle.loads(pickle.dumps(DcxError("no such file: x.png", exit_code=3)))  # as from a Ray worker
    assert (str(error), error.message, error.exit_code) == ("no such file: x.png", "no such file: x.png", 3)


@pytest.mark.parametrize("exit_code", [1, 3])
def test_a_command_reports_it_in_one_line_with_its_exit_code(exit_code):
    @click.command(cls=Command)
    def tool():
        raise DcxError("the plan was built for another GPU", exit_code=exit_code)

    result = CliRunner().invoke(tool, [])
    assert result.exit_code == exit_code
    assert result.output == "Error: the plan was built for another GPU\n"


def test_a_group_reports_errors_of_its_commands_and_of_option_callbacks():
    def refuse(ctx, param, value):
        if value == "bad":
            raise DcxError("bad value")
        return value

    @click.group(cls=Group)
    def tool():
        pass

    @tool.command()
    @click.option("--x", callback=refuse)
    def sub(x):
        raise DcxError(f"sub ran with {x}")

    assert CliRunner().invoke(tool, ["sub", "--x", "ok"]).output == "Error: sub ran with ok\n"
    bad = CliRunner().invoke(tool, ["sub", "--x", "bad"])
    assert bad.exit_code == 1 and bad.output == "Error: bad value\n"
