"""The model card drives the model and its input: mean/std, resize policy and interpolation are read, not decorative."""
from __future__ import annotations

import pytest
import torch

from dcx.core.card import ModelCard

from dcx.core.checkpoint import build_model, load_model, save_checkpoint
from dcx.core.devices import check_device, torch_device
from dcx.core.errors import DcxError
from dcx.core.models import create_model

CARD = dict(arch="resnet18", classes=["covid", "normal"], positive="covid", input_size=32)


@pytest.mark.parametrize("field, value, named", [("resize", "stretch", "letterbox"),
                                                 ("interpolation", "nearest", "bilinear-antialias")])
def test_a_card_asking_for_an_unimplemented_input_policy_is_refused(field, value, named):
    with pytest.raises(DcxError) as err:
        ModelCard(**CARD, **{field: value})
    assert value in err.value.message and named in err.value.message


def test_the_model_normalises_with_the_cards_mean_and_std(tmp_path):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    card = ModelCard(**CARD, mean=mean, std=std)
    trained = create_model("resnet18", 2, mean=mean, std=std)
    save_checkpoint(tmp_path / "m.pt", trained.state_dict(), card)
    model, loaded = load_model(tmp_path / "m.pt")
    assert loaded.mean == mean and not model.training
    assert torch.equal(model.mean.flatten(), torch.tensor(mean)) and torch.equal(model.std.flatten(), torch.tensor(std))


def test_weights_trained_with_other_statistics_than_the_card_records_are_refused():
    card = ModelCard(**CARD, mean=(0.5, 0.5, 0.5))
    with pytest.raises(DcxError, match="another mean/std"):
        build_model(card, create_model("resnet18", 2).state_dict())


def test_one_device_vocabulary():
    assert check_device("cuda") == "gpu"  # PyTorch's spelling is accepted on input
    assert torch_device("cpu") == torch.device("cpu")
    with pytest.raises(DcxError, match="auto, cpu, gpu"):
        check_device("tpu")
