"""Multi-head pose encoder (paper, Sec. 2.1): a CNN backbone and M fully connected heads."""

from __future__ import annotations

import torch
from torch import nn

from ..physics.so3 import s2s2_to_matrix

__all__ = ["MultiHeadEncoder", "build_backbone", "spread_rotations"]

# VGG16's convolutional configuration ("D" in Simonyan & Zisserman); "M" is a 2×2 max-pool.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# A lighter VGG-style stack for CPUs: four blocks of two 3×3 convolutions.
_LIGHT = [16, 16, "M", 32, 32, "M", 64, 64, "M", 128, 128, "M"]


def build_backbone(kind: str, size: int = 64) -> nn.Sequential:
    """VGG-style convolutional features; ``kind`` is ``"vgg16"`` (the paper's) or ``"light"``.

    A pool that would shrink the feature map below 1 × 1 is left out, so small (downsampled) inputs work.
    """
    if kind not in ("vgg16", "light"):
        raise ValueError(f"unknown encoder backbone {kind!r}: use 'vgg16' or 'light'")
    layers: list[nn.Module] = []
    channels = 1
    for item in _VGG16 if kind == "vgg16" else _LIGHT:
        if item == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers)


def spread_rotations(m: int) -> torch.Tensor:
    """``m`` rotations `(m, 3, 3)` whose viewing directions (third rows) cover the sphere evenly.

    Directions follow a Fibonacci lattice; in-plane angles are arbitrary (they are searched anyway).
    """
    i = torch.arange(m, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / m
    phi = torch.pi * (1 + 5**0.5) * i
    r = torch.sqrt(1 - z * z)
    d = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)  # (m, 3)
    helper = torch.where((d[:, 2:3].abs() < 0.9), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
                         torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    e1 = torch.nn.functional.normalize(torch.linalg.cross(helper, d, dim=-1), dim=-1)
    e2 = torch.linalg.cross(d, e1, dim=-1)
    return torch.stack([e1, e2, d], dim=-2).to(torch.float32)


class MultiHeadEncoder(nn.Module):
    """Image `(B, L, L)` → M candidate rotations `(B, M, 3, 3)` (S2S2) and shifts `(B, M, 2)` or None.

    Shifts are in pixels, RELION's origin convention (the image is the projection shifted by −origin),
    bounded to ``±max_shift`` by a tanh.

    Each head's last layer starts with small weights and a bias that encodes a rotation looking along
    one of M evenly spread directions, so the heads begin spread over the sphere rather than all near one
    pose: the winner-takes-all loss starts from M distinct hypotheses for every image, and each head's
    specialisation to a region of the sphere (paper, Supp. F) starts from there.
    """

    def __init__(
        self,
        size: int,
        heads: int,
        backbone: str = "light",
        hidden: int = 256,
        estimate_shifts: bool = False,
        max_shift: float = 0.0,
        spread_heads: bool = True,
    ):
        super().__init__()
        self.heads = heads
        self.estimate_shifts = estimate_shifts
        self.max_shift = max_shift
        self.backbone = build_backbone(backbone, size)
        with torch.no_grad():
            n_features = self.backbone.eval()(torch.zeros(1, 1, size, size)).numel()
        self.backbone.train()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(n_features, hidden), nn.ReLU(inplace=True))
        out = 8 if estimate_shifts else 6
        self.head_layers = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))
            for _ in range(heads)
        )
        if not spread_heads:  # the paper's plain initialisation
            return
        with torch.no_grad():
            anchors = spread_rotations(heads)
            for head, a in zip(self.head_layers, anchors, strict=False):
                last = head[-1]
                last.weight.mul_(0.1)
                last.bias.zero_()
                last.bias[:6] = torch.cat([a[:, 0], a[:, 1]])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.trunk(self.backbone(images[:, None]))
        out = torch.stack([h(feats) for h in self.head_layers], dim=1)  # (B, M, 6 or 8)
        rot = s2s2_to_matrix(out[..., :6])
        shifts = self.max_shift * torch.tanh(out[..., 6:8]) if self.estimate_shifts else None
        return rot, shifts
