"""Checkpoints: a run's whole state in ``RUN_DIR/checkpoint.pt``, written atomically, read back to resume
(or to question the run) without scanning the images again."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import __version__
from ..data.atomic import atomic_path
from .config import ReconstructionConfig
from .passes import pose_table
from .state import Modes, RunState

__all__ = ["CHECKPOINT", "load_checkpoint", "restore_state", "save_checkpoint"]

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
    if "polish_epochs" not in saved:  # written before stage 2 ended with the polish: the run as it was planned
        saved = {**saved, "polish_epochs": 0}
    if "relax_symmetry" not in saved:  # written before the polish relaxed poses to their symmetry mates: without
        saved = {**saved, "relax_symmetry": 0.0}
    config = ReconstructionConfig.from_dict({**saved, **overrides})
    return state, config


def restore_state(run, state: dict) -> None:
    """Load a checkpoint's ``state`` into ``run`` (a :class:`~napari_semiamort.run.Reconstruction` built blank)."""
    run.step_count = state["step"]
    run.stage1.load_state_dict(state)
    run.model.volume.load_state_dict(state["volume"])
    run.opt_volume.load_state_dict(state["opt_volume"])
    run.model.noise.load_state_dict(state["noise"])
    table = None
    if state["table"] is not None:
        table = pose_table(run.config, run.size, state["poses"].to(run.device))
        table.load_state_dict({k: v.to(run.device) for k, v in state["table"].items()})
    # checkpoints before the switch rule recorded its epoch: the fixed rule's
    switched = state.get("switched_at", run.schedule.switch.planned if table is not None else None)
    run.state = RunState(
        poses=state["poses"], winners=state.get("winners", torch.zeros(len(run.data), dtype=torch.long)),
        shifts=state["shifts"], previous_poses=state["previous_poses"], table=table, switched_at=switched,
        epoch=state["epoch"], history=list(state["history"]),
        paths={int(k): list(v) for k, v in state.get("paths", {}).items()}, junk=state.get("junk"),
        modes=Modes.from_dict(state.get("modes")))
    if state["shifts"] is None:  # not estimated, or no longer: dropped at the switch (centred particles)
        run.stage1.stop_shifts()
    run.restarts.resumed(run.state.history)
