"""Files dcx writes get the permissions of an ordinary write (0666 less the umask)."""
import os
import stat

import pytest
import torch

from dcx.core.card import ModelCard

from dcx.core.checkpoint import save_checkpoint
from dcx.core.files import atomic_path, write_json


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_follow_the_umask(tmp_path, umask):
    with atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"x")
    write_json(tmp_path / "summary.json", {"a": 1})
    expected = 0o666 & ~umask
    assert mode(tmp_path / "out.bin") == expected
    assert mode(tmp_path / "summary.json") == expected


def test_checkpoints_follow_the_umask(tmp_path, umask):
    card = ModelCard(arch="resnet18", classes=["covid", "normal"], positive="covid")
    save_checkpoint(tmp_path / "best.pt", {"w": torch.zeros(1)}, card)
    assert mode(tmp_path / "best.pt") == 0o666 & ~umask
