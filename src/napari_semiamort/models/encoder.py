"""Multi-head pose encoder (paper, Sec. 2.1): a CNN backbone and M fully connected heads."""

from __future__ import annotations

import torch
from torch import nn

from ..physics.so3 import s2s2_to_matrix

__all__ = ["MultiHeadEncoder", "build_backbone"]

# VGG16's convolutional configuration ("D" in Simonyan & Zisserman); "M" is a 2×2 max-pool.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# A lighter VGG-style stack for CPUs: four blocks of two 3×3 convolutions.
_LIGHT = [16, 16, "M", 32, 32, "M", 64, 64, "M", 128, 128, "M"]


def build_backbone(kind: str) -> nn.Sequential:
    """VGG-style convolutional features; ``kind`` is ``"vgg16"`` (the paper's) or ``"light"``."""
    if kind not in ("vgg16", "light"):
        raise ValueError(f"unknown encoder backbone {kind!r}: use 'vgg16' or 'light'")
    layers: list[nn.Module] = []
    channels = 1
    for item in _VGG16 if kind == "vgg16" else _LIGHT:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers)


class MultiHeadEncoder(nn.Module):
    """Image `(B, L, L)` → M candidate rotations `(B, M, 3, 3)` (S2S2) and shifts `(B, M, 2)` or None.

    Shifts are in pixels, RELION's origin convention (the image is the projection shifted by −origin),
    bounded to ``±max_shift`` by a tanh.
    """

    def __init__(
        self,
        size: int,
        heads: int,
        backbone: str = "light",
        hidden: int = 256,
        estimate_shifts: bool = False,
        max_shift: float = 0.0,
    ):
        super().__init__()
        self.heads = heads
        self.estimate_shifts = estimate_shifts
        self.max_shift = max_shift
        self.backbone = build_backbone(backbone)
        with torch.no_grad():
            n_features = self.backbone(torch.zeros(1, 1, size, size)).numel()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(n_features, hidden), nn.ReLU(inplace=True))
        out = 8 if estimate_shifts else 6
        self.head_layers = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))
            for _ in range(heads)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.trunk(self.backbone(images[:, None]))
        out = torch.stack([h(feats) for h in self.head_layers], dim=1)  # (B, M, 6 or 8)
        rot = s2s2_to_matrix(out[..., :6])
        shifts = self.max_shift * torch.tanh(out[..., 6:8]) if self.estimate_shifts else None
        return rot, shifts
