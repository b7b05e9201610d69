"""The models of the registry's architectures (:mod:`dcx.core.registry`: Deep-COVID's four
backbones and Apostolopoulos & Mpesiana's two best, MobileNet v2 and VGG19), each as a :class:`DcxNet`.

Every architecture is split into ``features`` (last convolutional map) and a ``head`` that
turns features into per-class *maps*; logits are the spatial mean of those maps. That one
structure gives classification and the class-activation map (CAM) of any class from the
same forward pass, in PyTorch and in every exported graph:

- ResNet / DenseNet: global average pooling + linear == mean of a 1x1 convolution's maps.
- SqueezeNet: its own 1x1 conv classifier + ReLU, averaged -- its native form.
- MobileNet v2, VGG19: the convolutional trunk is kept with its ImageNet weights and the
  ImageNet classifier (dense layers) is replaced, as in transfer learning, by the 1x1 head.

A fitted model also carries :class:`OodScore` (``DcxNet.ood``): how far an image's pooled
features lie from the training images', so the same forward pass says whether the model
was ever trained for an image like it (fitted by :mod:`dcx.train.ood`).
"""
from __future__ import annotations

import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import DcxError
from .preprocess import IMAGENET_MEAN, IMAGENET_STD
from .registry import ArchSpec, arch_spec


def _torchvision_models():
    """torchvision, imported when a model is first built: importing it adds about 160 MiB to a
    process, and one that serves an exported model (dcx-infer on ONNX, OpenVINO, TensorRT)
    builds none (measured with dcx-bench throughput's peak memory, benchmarks/README.md)."""
    import torchvision

    return torchvision.models


def weights_enum(spec: ArchSpec):
    """The torchvision weights enum member ``spec.weights`` names (its URL and metadata)."""
    enum, member = spec.weights.split(".")
    return getattr(getattr(_torchvision_models(), enum), member)


class _DenseNetFeatures(nn.Sequential):
    """torchvision's DenseNet applies ReLU after ``features`` in forward(); keep that."""

    def forward(self, x):
        return F.relu(super().forward(x))


def _trunk(spec: ArchSpec, backbone: nn.Module) -> nn.Module:
    """The backbone's convolutional trunk as the registry describes it (its modules, not copies)."""
    parts = [getattr(backbone, name) for name in spec.trunk]
    trunk = parts[0] if len(parts) == 1 else nn.Sequential(*parts)
    return _DenseNetFeatures(*trunk) if spec.relu_after_trunk else trunk


class GrayStem(nn.Module):
    """A backbone's first convolution, with the batch norm after it, folded with what comes before
    it in :class:`DcxNet`: gray replicated to three channels, then normalised. Exact, since all
    of it is linear in the gray value ``g``:

    ``conv(W, (g - mean_c) / std_c) = conv(sum_c W_c / std_c, g) + B``, ``B = conv(W, -mean_c / std_c)``

    where ``B`` is computed through the convolution's own zero padding, so it is constant inside
    and differs near the borders (the padding is 0 after normalisation, which is no single gray
    value). ``B`` is kept at output resolution for the input ``size`` the model is exported at.
    A third of the multiply-adds: in resnet18's INT8 graph in OpenVINO, where the first
    convolution stays float, that layer took half the time (15% of the model's before).
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d | None, mean: torch.Tensor, std: torch.Tensor,
                 size: int):
        super().__init__()
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        weight = conv.weight.detach().double()
        gain = (1.0 / std.double()).view(1, 3, 1, 1)
        folded = (weight * gain).sum(dim=1, keepdim=True)
        offsets = (-mean.double() * gain.flatten()).view(1, 3, 1, 1).expand(1, 3, size, size)
        constant = F.conv2d(offsets, weight, None, self.stride, self.padding, self.dilation)
        if conv.bias is not None:
            constant = constant + conv.bias.detach().double().view(1, -1, 1, 1)
        if norm is not None:
            scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
            folded = folded * scale.view(-1, 1, 1, 1)
            shift = norm.bias.detach().double() - scale * norm.running_mean.double()
            constant = constant * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        inside = constant[0, :, constant.shape[2] // 2, constant.shape[3] // 2]
        border = constant - inside.view(1, -1, 1, 1)
        self.register_buffer("weight", folded.float())
        self.register_buffer("bias", inside.float())
        # without padding every output sees the same constants: no border map to add (float64
        # rounding aside)
        exact = border.abs().max() <= 1e-9 * (1.0 + inside.abs().max())
        self.register_buffer("border", None if exact else border.float())

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(gray, self.weight, self.bias, self.stride, self.padding, self.dilation)
        return out if self.border is None else out + self.border


class OodScore(nn.Module):
    """Out-of-distribution score of pooled features: the Mahalanobis distance to the nearest
    class mean under one covariance shared by the classes (Lee et al., 2018), squared and
    divided by the feature count, so in-distribution images score about 1.

    The buffers hold the fit already whitened -- ``whitening`` W with W W^T = precision / C and
    ``centres`` = class means @ W -- so the graph is one matrix product and a distance, and
    values stay small enough for FP16 engines.
    """

    def __init__(self, centres: torch.Tensor, whitening: torch.Tensor):
        super().__init__()
        self.register_buffer("centres", centres.detach().float().clone())
        self.register_buffer("whitening", whitening.detach().float().clone())

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, C) pooled features -> (N,) score; higher is more unusual for this model."""
        z = pooled @ self.whitening
        return (z.unsqueeze(1) - self.centres.unsqueeze(0)).pow(2).sum(dim=2).min(dim=1).values


class DcxNet(nn.Module):
    """Unit-gray (N, 1, H, W) in -> logits; normalisation (the card's mean/std) lives inside."""

    def __init__(self, arch: str, features: nn.Module, feature_channels: int, num_classes: int, *,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.arch = arch
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.features = features
        conv = nn.Conv2d(feature_channels, num_classes, kernel_size=1)
        if arch.startswith("squeezenet"):
            # torchvision's init for this layer: small weights keep the ReLU'd maps alive at start.
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)
            self.head = nn.Sequential(nn.Dropout(p=0.5), conv, nn.ReLU(inplace=False))
        else:
            self.head = conv
        self.ood: OodScore | None = None

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w): the last convolutional map, the input of the 1x1 head."""
        if not isinstance(self.features[0], GrayStem):  # a folded stem reads unit gray itself
            x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.features(x)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C): the spatial mean of :meth:`feature_map`, what the OOD score is fitted on."""
        return self.feature_map(x).mean(dim=(2, 3))

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K, h, w) per-class evidence maps at feature resolution."""
        return self.head(self.feature_map(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_maps(x).mean(dim=(2, 3))

    def scores_and_cam(self, x: torch.Tensor, class_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax probabilities (N, K) and the CAM of ``class_index`` (N, h, w)."""
        return self.graph_outputs(x, class_index)[:2]

    def graph_outputs(self, x: torch.Tensor, class_index: int) -> tuple[torch.Tensor, ...]:
        """The export graph: probabilities, CAM and, once fitted, the OOD score (N,) -- all
        from one pass over the features."""
        features = self.feature_map(x)
        maps = self.head(features)
        outputs = (F.softmax(maps.mean(dim=(2, 3)), dim=1), maps[:, class_index])
        if self.ood is not None:
            outputs += (self.ood(features.mean(dim=(2, 3))),)
        return outputs

    def attach_ood(self, centres: torch.Tensor, whitening: torch.Tensor) -> None:
        """Attach a fitted :class:`OodScore` (its buffers then travel in the state dict)."""
        self.ood = OodScore(centres, whitening).to(self.mean.device)

    def with_gray_stem(self, size: int) -> "DcxNet":
        """A copy for export at ``size`` px whose first convolution (and the batch norm after it)
        reads the unit-gray input directly (:class:`GrayStem`): the same outputs, a third of the
        first layer's multiply-adds. ``self`` is unchanged; a trunk that does not open with a plain
        3-channel convolution is copied as it is."""
        folded = copy.deepcopy(self).eval()
        first = folded.features[0]
        if type(first) is not nn.Conv2d or first.in_channels != 3 or first.groups != 1:
            return folded
        norm = folded.features[1] if isinstance(folded.features[1], nn.BatchNorm2d) else None
        folded.features[0] = GrayStem(first, norm, self.mean.flatten(), self.std.flatten(), size)
        if norm is not None:
            folded.features[1] = nn.Identity()
        return folded

    def freeze_backbone(self) -> None:
        """Train the classifier only (the Deep-COVID setting)."""
        for p in self.features.parameters():
            p.requires_grad_(False)


def create_model(arch: str, num_classes: int, *, weights: str = "none", mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> DcxNet:
    """Build ``arch`` for ``num_classes``; ``weights`` is ``imagenet``, ``none`` or a local file.

    A local file holds torchvision ImageNet weights: air-gapped sites copy the file that
    ``imagenet`` would download.
    """
    spec = arch_spec(arch)
    backbone = getattr(_torchvision_models(), spec.name)(weights=None)
    if weights == "imagenet":
        backbone.load_state_dict(_download_imagenet(spec))
    elif weights not in ("none", None):
        _load_local_weights(backbone, spec, weights)
    return DcxNet(arch, _trunk(spec, backbone), spec.feature_channels, num_classes, mean=mean, std=std)


def model_cost(arch: str, size: int = 224, num_classes: int = 3) -> dict:
    """Parameters and GFLOPs (multiply-adds x 2, one image) of ``arch`` at ``size`` px, counted by
    torch's FLOP counter on the real graph, so the README's cost table is rerunnable."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(arch, num_classes).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, size, size))
    return {"arch": arch, "input_size": size, "params": sum(p.numel() for p in model.parameters()),
            "gflops": counter.get_total_flops() / 1e9}


def _download_imagenet(spec: ArchSpec) -> dict:
    try:
        return weights_enum(spec).get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        home = os.environ.get("TORCH_HOME", "~/.cache/torch")
        raise DcxError(
            f"cannot load ImageNet weights for {spec.name} ({type(exc).__name__}); offline? "
            f"put {weights_enum(spec).url.rsplit('/', 1)[-1]} under $TORCH_HOME/hub/checkpoints "
            f"(TORCH_HOME={home}) or pass --weights PATH to a local weights file"
        ) from exc


def _load_local_weights(backbone: nn.Module, spec: ArchSpec, path: str) -> None:
    if not os.path.isfile(path):
        raise DcxError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DcxError(f"{path} is not a readable weights file ({type(exc).__name__})") from exc
    if isinstance(state, dict) and "state_dict" in state and "card" in state:
        raise DcxError(f"{path} is a dcx checkpoint; use dcx-train --resume to continue training it")
    try:
        backbone.load_state_dict(state)
    except Exception as exc:
        raise DcxError(f"{path} does not hold {spec.name} weights: {str(exc).splitlines()[0]}") from exc
