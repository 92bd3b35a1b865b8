"""Map and pose quality: FSC, resolution, pose errors after frame alignment, a map scored against the truth."""

from .alignment import PoseAlignment, align_poses, rotate_map
from .fsc import fsc, resolution_at
from .truth import TruthScore, score_against_truth

__all__ = ["PoseAlignment", "TruthScore", "align_poses", "fsc", "resolution_at", "rotate_map", "score_against_truth"]
