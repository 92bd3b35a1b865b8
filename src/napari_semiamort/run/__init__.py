"""The reconstruction run: configuration, the two-stage loop, snapshots, outputs."""

from .config import ReconstructionConfig
from .loop import Reconstruction, select_device
from .snapshot import Snapshot, WatchedParticle

__all__ = ["Reconstruction", "ReconstructionConfig", "Snapshot", "WatchedParticle", "select_device"]
