"""Map and pose quality: FSC, resolution, pose errors after frame alignment."""

from .alignment import PoseAlignment, align_poses, rotate_map
from .fsc import fsc, resolution_at

__all__ = ["PoseAlignment", "align_poses", "fsc", "resolution_at", "rotate_map"]
