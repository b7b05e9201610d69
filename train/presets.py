"""Train and eval transforms, as small presets (torchvision ``references/classification`` style).

Both take the unit-gray image from :func:`dcx.core.reader.read_unit_gray` and return the
float32 tensor (1, size, size) the model sees. Evaluation is exactly the preprocessing
contract. Training perturbs it only in ways a radiograph can really vary -- framing, a slight
tilt, exposure -- and ends in the same letterbox, so the model never learns a geometry the
engine will not feed it. Horizontal flips are off by default: the heart sits on the left, and a
mirrored film is not a plausible input.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF

from dcx.core.preprocess import Preprocess, as_tensor, letterbox


@dataclass(frozen=True, kw_only=True)
class EvalPreset:
    """The preprocessing contract itself: letterbox to ``size``, nothing else."""

    size: int

    def __call__(self, unit_gray) -> torch.Tensor:
        return Preprocess(self.size)(unit_gray)


@dataclass(frozen=True, kw_only=True)
class TrainPreset:
    """Crop -> exposure jitter -> letterbox -> small rotation (-> optional flip).

    ``scale``: fraction of the film area kept by the random crop; ``aspect_jitter``: how far the
    crop's aspect ratio may stray from the film's own (so letterbox padding stays as at eval);
    ``rotation``: degrees either way; ``brightness``/``contrast``: relative jitter.
    """

    size: int
    scale: tuple[float, float] = (0.8, 1.0)
    aspect_jitter: float = 0.1
    rotation: float = 7.0
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False
    pad_value: float = 0.0

    def __call__(self, unit_gray) -> torch.Tensor:
        image = as_tensor(unit_gray)
        aspect = image.shape[-1] / image.shape[-2]
        ratio = (aspect * (1 - self.aspect_jitter), aspect * (1 + self.aspect_jitter))
        top, left, h, w = T.RandomResizedCrop.get_params(image, list(self.scale), list(ratio))
        image = self._jitter(image[..., top:top + h, left:left + w])
        image = letterbox(image, self.size, self.pad_value)
        angle = _uniform(-self.rotation, self.rotation)
        image = TF.rotate(image, angle, interpolation=T.InterpolationMode.BILINEAR, fill=[self.pad_value])
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image.contiguous()

    def _jitter(self, image: torch.Tensor) -> torch.Tensor:
        """Before the letterbox, so the padding stays exactly ``pad_value``."""
        brightness = _uniform(1 - self.brightness, 1 + self.brightness)
        contrast = _uniform(1 - self.contrast, 1 + self.contrast)
        mean = image.mean()
        return (((image - mean) * contrast + mean) * brightness).clamp_(0.0, 1.0)

    def describe(self) -> dict:
        """For the model card: what the training images went through."""
        return {"preset": type(self).__name__, **asdict(self)}


def _uniform(low: float, high: float) -> float:
    """From torch's RNG, which DataLoader seeds per worker (numpy/random would repeat across workers)."""
    return float(torch.empty(()).uniform_(low, high))
