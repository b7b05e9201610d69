"""The architectures dcx trains (timm's registry and ``default_cfg``, in small): each one's
torchvision constructor and ImageNet weights, and where its convolutional trunk ends.

Plain data, so a command line lists the architectures without importing PyTorch;
:mod:`dcx.core.models` builds them.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import DcxError


@dataclass(frozen=True)
class ArchSpec:
    """``name`` is also the torchvision constructor, ``weights`` its ImageNet weights enum
    member. ``trunk`` names the backbone's attributes that make up the features, in order (one
    name: that module itself); ``relu_after_trunk`` for DenseNet, whose ``forward()`` applies a
    ReLU after ``features``."""

    name: str
    weights: str  # e.g. "ResNet18_Weights.IMAGENET1K_V1"
    feature_channels: int
    trunk: tuple[str, ...] = ("features",)
    relu_after_trunk: bool = False


_REGISTRY: dict[str, ArchSpec] = {}


def register_model(spec: ArchSpec) -> ArchSpec:
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def arch_spec(arch: str) -> ArchSpec:
    if arch not in _REGISTRY:
        raise DcxError(f"unknown architecture {arch!r}; choose from {', '.join(list_models())}")
    return _REGISTRY[arch]


_RESNET_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

register_model(ArchSpec("resnet18", "ResNet18_Weights.IMAGENET1K_V1", 512, _RESNET_TRUNK))
register_model(ArchSpec("resnet50", "ResNet50_Weights.IMAGENET1K_V2", 2048, _RESNET_TRUNK))
register_model(ArchSpec("squeezenet1_1", "SqueezeNet1_1_Weights.IMAGENET1K_V1", 512))
register_model(ArchSpec("densenet121", "DenseNet121_Weights.IMAGENET1K_V1", 1024, relu_after_trunk=True))
register_model(ArchSpec("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1", 1280))
register_model(ArchSpec("vgg19", "VGG19_Weights.IMAGENET1K_V1", 512))
