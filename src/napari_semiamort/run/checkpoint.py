"""Checkpoints: a run's whole state in ``RUN_DIR/checkpoint.pt``, written atomically, read back to resume
(or to question the run) without scanning the images again."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import __version__
from ..data.atomic import atomic_path
from .config import ReconstructionConfig

__all__ = ["CHECKPOINT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """``state`` (a run's :meth:`~napari_semiamort.run.Reconstruction.state_dict`) to ``RUN_DIR/checkpoint.pt``."""
    path = Path(run_dir) / CHECKPOINT
    with atomic_path(path) as tmp:
        torch.save({"version": __version__, **state}, tmp)
    return path


def load_checkpoint(run_dir: str | Path, **overrides) -> tuple[dict, ReconstructionConfig]:
    """The state saved in ``RUN_DIR/checkpoint.pt`` and its configuration with ``overrides`` applied."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state["config"]
    if "stage1" not in saved:  # written before stage 1 had a choice (and the grid became the default): heads
        saved = {**saved, "stage1": "heads"}
    config = ReconstructionConfig.from_dict({**saved, **overrides})
    return state, config
