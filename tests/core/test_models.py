"""The core contracts: model registry, weights loading, model card and checkpoint files."""
import urllib.error

import pytest
import torch
import torchvision

from dcx.core.card import ModelCard

from dcx.core.checkpoint import load_checkpoint, save_checkpoint
from dcx.core.errors import DcxError
from dcx.core.models import create_model
from dcx.core.registry import list_models


def test_registry_lists_both_papers_architectures():
    assert list_models() == ["densenet121", "mobilenet_v2", "resnet18", "resnet50", "squeezenet1_1", "vgg19"]
    with pytest.raises(DcxError, match="unknown architecture 'vgg16'; choose from densenet121"):
        create_model("vgg16", 3)


@pytest.mark.parametrize("arch", ["resnet18", "squeezenet1_1", "mobilenet_v2", "vgg19"])
def test_logits_are_the_mean_of_the_class_maps_and_cam_is_one_of_them(arch):
    model = create_model(arch, 3).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        maps, logits = model.class_maps(x), model(x)
        probs, cam = model.scores_and_cam(x, 2)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), logits)
    torch.testing.assert_close(probs, logits.softmax(1))
    torch.testing.assert_close(cam, maps[:, 2])


def test_imagenet_weights_offline_fail_fast_naming_torch_home_and_weights_path(monkeypatch, tmp_path):
    def offline(*args, **kwargs):  # the network is the one edge this machine cannot reach
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(DcxError) as err:
        create_model("resnet18", 3, weights="imagenet")
    assert "TORCH_HOME" in str(err.value) and "--weights PATH" in str(err.value)
    assert "resnet18-f37072fd.pth" in str(err.value)


def test_local_torchvision_weights_file_is_loaded(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", 3, weights=str(path))
    torch.testing.assert_close(model.features[0].weight, reference.conv1.weight)


@pytest.mark.parametrize("arch, first_conv", [("mobilenet_v2", lambda f: f[0][0]),
                                               ("vgg19", lambda f: f[0])])
def test_transfer_learning_keeps_the_trunk_and_drops_the_imagenet_classifier(arch, first_conv, tmp_path):
    reference = getattr(torchvision.models, arch)(weights=None)
    path = tmp_path / f"{arch}-imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = create_model(arch, 3, weights=str(path))
    torch.testing.assert_close(first_conv(model.features).weight, first_conv(reference.features).weight)
    trunk = sum(p.numel() for p in reference.features.parameters())
    head = model.head.weight.numel() + model.head.bias.numel()
    assert sum(p.numel() for p in model.parameters()) == trunk + head


def test_wrong_or_missing_local_weights_are_named(tmp_path):
    with pytest.raises(DcxError, match="weights file not found"):
        create_model("resnet18", 3, weights=str(tmp_path / "nope.pth"))
    path = tmp_path / "squeeze.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), path)
    with pytest.raises(DcxError, match="does not hold resnet18 weights"):
        create_model("resnet18", 3, weights=str(path))


def _card(**kw):
    return ModelCard(arch="resnet18", classes=["covid", "normal"], positive="covid", input_size=64, **kw)


def test_checkpoint_round_trip_keeps_card_and_weights(tmp_path):
    model = create_model("resnet18", 2)
    card = _card(threshold=0.37, metrics={"validation": {"auc": 0.9}})
    path = save_checkpoint(tmp_path / "best.pt", model.state_dict(), card)
    loaded_card, state, resume = load_checkpoint(path)
    assert loaded_card.to_dict() == card.to_dict() and loaded_card.model_id == card.model_id
    assert resume is None
    torch.testing.assert_close(state["head.weight"], model.state_dict()["head.weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"], "no temp file left behind"


def test_corrupt_foreign_and_missing_checkpoints_give_one_line_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    foreign = tmp_path / "foreign.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), foreign)
    for path, message in ((tmp_path / "missing.pt", "checkpoint not found"),
                          (corrupt, "is not a readable checkpoint"),
                          (foreign, "is not a dcx checkpoint")):
        with pytest.raises(DcxError, match=message) as err:
            load_checkpoint(path)
        assert "\n" not in str(err.value)


def test_card_refuses_a_positive_class_it_does_not_have():
    with pytest.raises(DcxError, match="positive class 'covid' is not one of"):
        ModelCard(arch="resnet18", classes=["normal", "pneumonia"], positive="covid")


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "densenet121", "vgg19"])
def test_model_cost_agrees_with_torchvision_published_operations(arch):
    """torchvision's weights metadata states GFLOPS as multiply-adds of the ImageNet model; ours
    replaces the ImageNet classifier by a 3-class 1x1 head, a fraction of a percent of the cost."""
    from dcx.core.models import model_cost, weights_enum
    from dcx.core.registry import arch_spec

    cost = model_cost(arch, 224)
    published = weights_enum(arch_spec(arch)).meta["_ops"]
    assert cost["gflops"] / 2 == pytest.approx(published, rel=0.02)
    model = create_model(arch, 3)
    assert cost["params"] == sum(p.numel() for p in model.parameters())


def _random_batch_norms(model: torch.nn.Module) -> None:
    """Fresh models have identity batch norms, which would hide a wrong fold."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


@pytest.mark.parametrize("arch, border", [("resnet18", True), ("densenet121", True), ("squeezenet1_1", False),
                                          ("vgg19", True)])
def test_gray_stem_gives_the_same_outputs_from_one_input_channel(arch, border):
    """Folding gray -> 3 channels -> normalisation -> first conv (-> batch norm) into one 1-channel
    convolution is exact, black letterbox borders included (the zero padding of normalised
    channels is no gray value: the border map carries the difference); squeezenet's unpadded
    first conv needs no map."""
    model = create_model(arch, 3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)).eval()
    _random_batch_norms(model)
    folded = model.with_gray_stem(64)
    stem = folded.features[0]
    assert type(stem).__name__ == "GrayStem" and stem.weight.shape[1] == 1
    assert (stem.border is not None) == border
    assert isinstance(model.features[0], torch.nn.Conv2d)  # the model itself is untouched
    x = torch.rand(2, 1, 64, 64)
    x[:, :, :, :20] = 0  # a letterbox margin
    with torch.no_grad():
        expected, got = model.graph_outputs(x, 0), folded.graph_outputs(x, 0)
        features = model.feature_map(x)
    torch.testing.assert_close(folded.feature_map(x), features, atol=1e-4 * float(features.abs().max()), rtol=0)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_gray_stem_leaves_a_trunk_without_a_plain_first_conv_as_it_is():
    model = create_model("mobilenet_v2", 3).eval()  # opens with conv + norm + ReLU6 in one block
    folded = model.with_gray_stem(64)
    assert type(folded.features[0]) is type(model.features[0]) and folded is not model
