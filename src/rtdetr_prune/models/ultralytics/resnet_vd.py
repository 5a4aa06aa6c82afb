"""ResNet-vd BasicBlock backbones of the RT-DETR paper (PResNet-18/34), usable from Ultralytics YAML.

(R50/R101 in our zoo are Ultralytics' own ``rtdetr-resnet50/101`` configs, so that checkpoints users
trained with Ultralytics load as they are.)

Ultralytics' parser only knows its own layer names, but it has a documented door for outside
backbones: the ``TorchVision`` layer, which builds any model that ``torchvision.models.get_model``
knows, and returns every stage's output when ``split=True``; ``Index`` layers then pick the P3, P4
and P5 maps. We register our backbones as torchvision model builders, so a YAML row such as::

    - [-1, 1, TorchVision, [512, rtdetr_presnet18vd, null, True, 0, True]]

builds the backbone inside a stock Ultralytics ``RTDETRDetectionModel``. The builders are
registered when ``rtdetr_prune`` is imported.

Layout of the returned module (``children()`` order, which is what ``TorchVision(split=True)``
yields, after the input image itself at index 0):
    1 stem (stride 2), 2 max-pool (stride 4), 3 stage C2 (stride 4), 4 C3 (stride 8),
    5 C4 (stride 16), 6 C5 (stride 32).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import list_models

# torchvision's builder registry is the one public registration point ``get_model`` reads.
from torchvision.models._api import register_model
from ultralytics.nn.modules import Conv

__all__ = ["BasicBlock", "PResNet", "PRESNET_SPECS"]


def _conv_relu(c1: int, c2: int, k: int, s: int) -> Conv:
    """Conv-BN-ReLU; Ultralytics' ``Conv`` so that its ``fuse()`` folds the BN at export."""
    return Conv(c1, c2, k, s, act=nn.ReLU(inplace=True))


def _conv_linear(c1: int, c2: int, k: int, s: int) -> Conv:
    """Conv-BN without activation (the last conv of a residual branch, and projections)."""
    return Conv(c1, c2, k, s, act=False)


class _Shortcut(nn.Module):
    """Projection shortcut of ResNet-vd: average-pool then 1x1 conv when striding (variant "d")."""

    def __init__(self, c1: int, c2: int, stride: int):
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2, 0, ceil_mode=True) if stride == 2 else nn.Identity()
        self.conv = _conv_linear(c1, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut (ResNet-18/34). Output channels: ``c2``."""

    expansion = 1

    def __init__(self, c1: int, c2: int, stride: int, project: bool):
        super().__init__()
        self.cv1 = _conv_relu(c1, c2, 3, stride)
        self.cv2 = _conv_linear(c2, c2, 3, 1)
        self.short = _Shortcut(c1, c2, stride) if project else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.cv2(self.cv1(x)) + self.short(x))


class _Stem(nn.Module):
    """ResNet-vd deep stem: three 3x3 convs (the first with stride 2) instead of one 7x7."""

    def __init__(self, widths: tuple[int, int, int]):
        super().__init__()
        a, b, c = widths
        self.cv1 = _conv_relu(3, a, 3, 2)
        self.cv2 = _conv_relu(a, b, 3, 1)
        self.cv3 = _conv_relu(b, c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(self.cv2(self.cv1(x)))


class _Stage(nn.Module):
    """``n`` residual blocks; the first one strides (except in C2) and always projects, as in PResNet."""

    def __init__(self, block: type[nn.Module], c1: int, c2: int, n: int, stride: int):
        super().__init__()
        c_out = c2 * block.expansion
        self.blocks = nn.ModuleList(
            block(c1 if i == 0 else c_out, c2, stride if i == 0 else 1, project=i == 0) for i in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


class PResNet(nn.Module):
    """ResNet-vd backbone. Input: images (B, 3, H, W). Each child's output feeds the next one.

    Args:
        block: residual block class with an ``expansion`` attribute (``BasicBlock``).
        depths: blocks per stage C2..C5.
        widths: base widths per stage C2..C5 (output = width * block.expansion).
        stem: widths of the three stem convs.
    """

    def __init__(self, block, depths, widths=(64, 128, 256, 512), stem=(32, 32, 64)):
        super().__init__()
        self.stem = _Stem(stem)
        self.pool = nn.MaxPool2d(3, 2, 1)
        c_in = stem[-1]
        for i, (n, w) in enumerate(zip(depths, widths)):
            self.add_module(f"c{i + 2}", _Stage(block, c_in, w, n, 1 if i == 0 else 2))
            c_in = w * block.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.children():
            x = m(x)
        return x


# name -> (block, depths, widths, stem). Builders take ``weights`` only because torchvision passes it;
# nothing is downloaded, ever: pretrained weights must come from the user's own checkpoint.
PRESNET_SPECS = {
    "rtdetr_presnet18vd": (BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), (32, 32, 64)),
    "rtdetr_presnet34vd": (BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512), (32, 32, 64)),
    "rtdetr_presnet_tiny": (BasicBlock, (1, 1, 1, 1), (16, 32, 64, 128), (8, 8, 16)),
    # ResNet-18-vd's depths at half its widths: the accuracy benchmark's proxy model (docs/benchmarks.md)
    "rtdetr_presnet_proxy": (BasicBlock, (2, 2, 2, 2), (32, 64, 128, 256), (16, 16, 32)),
    # the proxy at half width before the decoder (about half its GFLOPs), trained from scratch to judge its redundancy
    "rtdetr_presnet_proxy_narrow": (BasicBlock, (2, 2, 2, 2), (16, 32, 64, 128), (16, 16, 16)),
}


def _make_builder(name: str):
    block, depths, widths, stem = PRESNET_SPECS[name]

    def build(weights=None, **kwargs) -> PResNet:
        if weights is not None:
            raise ValueError(
                f"{name}: pretrained backbone weights cannot be fetched; pass weights=None (null in YAML) "
                "and load a trained RT-DETR checkpoint instead."
            )
        return PResNet(block, depths, widths, stem)

    build.__name__ = name
    return build


def register_backbones() -> None:
    """Register every PResNet builder with torchvision (idempotent)."""
    known = set(list_models())
    for name in PRESNET_SPECS:
        if name not in known:
            register_model(name)(_make_builder(name))


register_backbones()
