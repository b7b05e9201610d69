"""Progress lines for logs (stderr not a terminal) and for a terminal."""
import io
import time

import pytest

from conftest import invoke
from dcx.core.progress import Progress, rate


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_come_at_each_tenth_and_say_how_far(monkeypatch):
    monkeypatch.setenv("DCX_PROGRESS_SECONDS", "3600")
    log = io.StringIO()
    progress = Progress("dcx-infer", total=200, unit="files", stream=log)
    for done in range(1, 201):
        progress.update(done, "detail")
    progress.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 11, lines  # ten tenths and the closing line
    assert lines[0].startswith("dcx-infer: 20/200 files (10.0%)") and "ETA" in lines[0] and "detail" in lines[0]
    assert lines[-1].startswith("dcx-infer: 200/200 files (100.0%)")
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


def test_log_lines_every_interval_without_a_total(monkeypatch):
    monkeypatch.setenv("DCX_PROGRESS_SECONDS", "0.05")
    log = io.StringIO()
    progress = Progress("dcx-train epoch 1/3", unit="batches", stream=log)
    for done in range(1, 5):
        time.sleep(0.06)
        progress.update(done)
    assert len(log.getvalue().splitlines()) == 4
    assert "elapsed" in log.getvalue()


def test_zero_seconds_switches_log_lines_off(monkeypatch):
    monkeypatch.setenv("DCX_PROGRESS_SECONDS", "0")
    log = io.StringIO()
    with Progress("x", total=10, stream=log) as progress:
        for done in range(11):
            progress.update(done)
    assert log.getvalue() == ""


def test_terminal_redraws_one_line():
    term = Terminal()
    progress = Progress("dcx-infer", total=4, unit="files", stream=term)
    progress.interval = 0.0
    for done in range(1, 5):
        progress.update(done)
    progress.close()
    out = term.getvalue()
    assert out.count("\r") == 5 and out.endswith("\n") and out.count("\n") == 1


@pytest.mark.parametrize("command", ["infer", "train"])
def test_long_commands_log_progress_when_stderr_is_a_file(command, monkeypatch, synth_archive, trained_checkpoint, tmp_path):
    """What cron or Kubernetes sees: whole lines on stderr from dcx-infer and dcx-train."""
    monkeypatch.setenv("DCX_PROGRESS_SECONDS", "0.01")
    if command == "infer":
        from dcx.engine.cli import main
        result = invoke(main, ["--engine", trained_checkpoint, synth_archive, "--exclude", "manifest.csv",
                               "--exclude", "masks.npz", "--out", tmp_path / "r.csv", "--batch-size", 16], expect_exit=None)
        assert result.exit_code in (0, 4), result.output  # 4: some images out of distribution
        prefix = "dcx-infer: "
    else:
        from dcx.train.train_cli import main
        result = invoke(main, ["--data", synth_archive, "--arch", "resnet18", "--img-size", 32, "--epochs", 1,
                               "--batch-size", 16, "--weights", "none", "--out", tmp_path / "run"])
        prefix = "dcx-train epoch 1/1: "
    lines = [line for line in result.output.splitlines() if line.startswith(prefix)]
    assert len(lines) >= 2, result.output
    assert f"{prefix.split(': ')[0]}: " in lines[-1] and "/" in lines[-1] and "\r" not in result.output


def test_slow_rates_are_per_minute():
    assert rate(95.34, "files") == "95.3 files/s"
    assert rate(0.005, "batches") == "0.3 batches/min"
