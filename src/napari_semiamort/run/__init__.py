"""The reconstruction run: configuration, the two-stage loop and its parts, snapshots, outputs."""

from .config import ReconstructionConfig
from .loop import Reconstruction
from .snapshot import Snapshot, WatchedParticle

__all__ = ["Reconstruction", "ReconstructionConfig", "Snapshot", "WatchedParticle"]
