"""Learnable parts: the Hartley volume, the multi-head encoder, the per-image pose table."""

from .encoder import MultiHeadEncoder, build_backbone
from .poses import PoseTable
from .volume import HartleyVolume

__all__ = ["HartleyVolume", "MultiHeadEncoder", "PoseTable", "build_backbone"]
