"""Checkpoints that mean what they say (issue 20): a run killed at any moment (SIGKILL), stopped (Ctrl-C, SIGTERM)
or crashed resumes to the map the uninterrupted run makes, losing at most the epoch in progress; the restarts are
checkpointed and their selection resumed; a checkpoint is read without running code.

The training runs in a subprocess (the CLI, through a small driver that makes one chosen step wait for the test:
the kill or the signal lands at a known step, never on a timer), or in this process for the checkpoints between
two steps."""

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_semiamort.cli.main import main
from napari_semiamort.data.mrc import read_map
from napari_semiamort.data.star import read_star_columns
from napari_semiamort.metrics.fsc import fsc
from napari_semiamort.run import Reconstruction, ReconstructionConfig, checkpoint
from napari_semiamort.run.checkpoint import DamagedCheckpoint, UnsafeCheckpoint, read_checkpoint

STEPS_PER_EPOCH = 5  # 300 images in batches of 60
# the CLI's run: 2 restarts of 2 epochs (a third may be added: max 3), then epochs 3-5, the switch at 3
CLI_SETTINGS = ["--threads", "1", "--epochs", "5", "--switch-epoch", "3", "--restarts", "2", "--restart-epochs", "2",
                "--max-restarts", "3", "--batch-size", "60", "--seed", "3"]

# Runs the CLI with the step numbered PAUSE (1-based, the restarts' steps included) or the first map write of the
# outputs ("outputs") made to wait, its work done, until the test creates FLAGS/go (or two minutes pass).
DRIVER = r"""
import sys, time
from pathlib import Path

from napari_semiamort.cli.main import main
from napari_semiamort.run import outputs
from napari_semiamort.run.loop import Reconstruction

where, flags, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]


def wait():
    (flags / "paused").touch()
    end = time.monotonic() + 120
    while not (flags / "go").exists() and time.monotonic() < end:
        time.sleep(0.01)


if where == "outputs":
    write_mrc = outputs.write_mrc

    def paused_write(*a, **k):
        wait()
        return write_mrc(*a, **k)

    outputs.write_mrc = paused_write
else:
    step = Reconstruction._step

    def paused_step(self, *a, **k):
        loss = step(self, *a, **k)
        if self.step_count + 1 == int(where):
            wait()
        return loss

    Reconstruction._step = paused_step
raise SystemExit(main(args))
"""


@pytest.fixture(scope="module")
def star(tmp_path_factory, ribosome_images):
    out = ribosome_images(tmp_path_factory.mktemp("sim"), n_particles=300, box=32, snr=1.0, seed=7)
    return out / "particles.star"


class Training:
    """The CLI training in a subprocess, made to wait at one point (:data:`DRIVER`) for the test's kill or signal."""

    def __init__(self, star: Path, run: Path, where: str, *extra: str):
        self.run, self.flags = run, run.parent / f"{run.name}-flags"
        self.flags.mkdir()
        self.out, self.err = self.flags / "stdout", self.flags / "stderr"
        cmd = [sys.executable, "-c", DRIVER, where, str(self.flags), "reconstruct", str(star), "-o", str(run),
               *CLI_SETTINGS, *extra]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        self._until(lambda: (self.flags / "paused").exists(), "the chosen step")

    def _until(self, done, what: str, seconds: float = 120.0) -> None:
        end = time.monotonic() + seconds
        while not done():
            if self.proc.poll() is not None:
                pytest.fail(f"the training ended before {what}: {self.err.read_text()[-2000:]}")
            if time.monotonic() > end:
                self.proc.kill()
                pytest.fail(f"the training did not reach {what}")
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        """Send ``sig`` and wait until the training has taken it (its note on stderr)."""
        seen = self.err.read_text().count("stopping after the current step")
        self.proc.send_signal(sig)
        self._until(lambda: self.err.read_text().count("stopping after the current step") > seen, "the signal")

    def go(self, timeout: float = 300.0) -> int:
        (self.flags / "go").touch()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL
        self.proc.wait(60)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_semiamort.cli.main", *args], capture_output=True,
                          text=True, timeout=600)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(star, tmp_path_factory):
    """The uninterrupted run of :data:`CLI_SETTINGS`."""
    run = tmp_path_factory.mktemp("whole") / "run"
    done = _cli("reconstruct", str(star), "-o", str(run), *CLI_SETTINGS)
    assert done.returncode == 0, done.stderr
    return run


def _fsc_to_half_nyquist(a: Path, b: Path) -> float:
    """The lowest FSC between the two run folders' maps up to half Nyquist."""
    (m1, _), (m2, _) = read_map(a / "map.mrc"), read_map(b / "map.mrc")
    return float(fsc(torch.from_numpy(m1), torch.from_numpy(m2))[: len(m1) // 4 + 1].min())


def _assert_same_run(run: Path, whole: Path) -> None:
    """``run`` ended as the uninterrupted run: its map (FSC ≥ 0.99 to half Nyquist; in fact bit-identical), its
    poses, and one line per epoch in metrics.jsonl with the same losses and the same restart kept."""
    assert _fsc_to_half_nyquist(run, whole) >= 0.99
    assert np.array_equal(read_map(run / "map.mrc")[0], read_map(whole / "map.mrc")[0])
    mine, theirs = read_star_columns(run / "poses.star"), read_star_columns(whole / "poses.star")
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
        np.testing.assert_array_equal(mine[column], theirs[column])
    ours, uninterrupted = _metrics(run), _metrics(whole)
    key = [(m.get("restart"), m["epoch"], m["loss"]) for m in ours]
    assert key == [(m.get("restart"), m["epoch"], m["loss"]) for m in uninterrupted]
    ours, uninterrupted = (read_checkpoint(r / "checkpoint.pt")["history"] for r in (run, whole))
    chosen = [(m["chosen_restart"], m["restart_losses"]) for m in ours if "chosen_restart" in m]
    assert chosen == [(m["chosen_restart"], m["restart_losses"]) for m in uninterrupted if "chosen_restart" in m]
    assert len(chosen) == 1


def _total_steps(run: Path) -> int:
    return int(read_checkpoint(run / "checkpoint.pt")["step"])


# ---------------------------------------------------------------- SIGKILL
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_map_redoing_at_most_the_epoch_in_progress(
        star, whole, tmp_path):
    pause = _total_steps(whole) - 2  # the third step of the last epoch, in stage 2
    training = Training(star, tmp_path / "run", str(pause))
    lines = _metrics(tmp_path / "run")
    assert len([m for m in lines if "restart" not in m]) >= 1  # an epoch after the restarts is done
    training.kill()
    saved = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (pause - 1) - saved["step"] <= STEPS_PER_EPOCH  # the work lost: at most the epoch in progress
    assert saved["epoch"] == lines[-1]["epoch"]  # the last epoch's end, whose line metrics.jsonl holds
    resumed = _cli("reconstruct", "--resume", str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(tmp_path / "run", whole)


def test_a_run_killed_during_the_restarts_resumes_and_keeps_the_same_restart(star, whole, tmp_path):
    pause = 2 * 2 * STEPS_PER_EPOCH - 2  # restart 2's second epoch, its third step
    training = Training(star, tmp_path / "run", str(pause))
    training.kill()
    saved = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["trial"] == 1 and saved["epoch"] == 1 and saved["restarts"]["losses"]  # restart 1's record
    assert not (tmp_path / "run" / "map.mrc").exists()
    resumed = _cli("reconstruct", "--resume", str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr
    assert "kept restart" in resumed.stdout
    _assert_same_run(tmp_path / "run", whole)


def test_a_run_killed_while_writing_its_outputs_writes_them_on_resume(star, whole, tmp_path):
    training = Training(star, tmp_path / "run", "outputs")  # poses.star written, map.mrc not yet
    training.kill()
    assert not (tmp_path / "run" / "map.mrc").exists()
    resumed = _cli("reconstruct", "--resume", str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(tmp_path / "run", whole)


# ---------------------------------------------------------------- Ctrl-C and SIGTERM
def test_ctrl_c_during_the_restarts_stops_at_the_step_then_resume_gives_the_uninterrupted_map(star, whole, tmp_path):
    pause = STEPS_PER_EPOCH + 2  # restart 1's second epoch, its second step
    training = Training(star, tmp_path / "run", str(pause))
    training.signal(signal.SIGINT)
    assert training.go() == 130
    out, err = training.out.read_text(), training.err.read_text()
    assert "Traceback" not in err
    assert "Ctrl-C: stopped 2 steps into epoch 2 of restart 1" in out and "--resume" in out.splitlines()[-1]
    saved = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["step"] == pause and saved["progress"]["losses"] and saved["trial"] == 0  # at the step
    assert read_map(tmp_path / "run" / "map.mrc")[0].std() > 0  # the map reached
    resumed = _cli("reconstruct", "--resume", str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(tmp_path / "run", whole)


def test_sigterm_writes_the_map_and_poses_reached_exits_143_and_resumes_to_the_uninterrupted_map(
        star, whole, tmp_path):
    pause = _total_steps(whole) - 7  # in the epoch before the last, in stage 2
    training = Training(star, tmp_path / "run", str(pause))
    training.signal(signal.SIGTERM)
    assert training.go() == 143
    assert "Traceback" not in training.err.read_text()
    assert "SIGTERM: stopped" in training.out.read_text()
    volume, voxel = read_map(tmp_path / "run" / "map.mrc")
    assert volume.shape == (32, 32, 32) and np.isfinite(volume).all() and volume.std() > 0 and voxel > 0
    poses = read_star_columns(tmp_path / "run" / "poses.star")
    assert len(poses["rlnAngleRot"]) == 300 and np.isfinite(poses["rlnAngleTilt"]).all()
    resumed = _cli("reconstruct", "--resume", str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(tmp_path / "run", whole)


def test_a_second_ctrl_c_aborts_at_once(star, tmp_path):
    training = Training(star, tmp_path / "run", "3")
    training.signal(signal.SIGINT)
    training.proc.send_signal(signal.SIGINT)  # while the step still runs
    assert training.proc.wait(60) == 130
    assert "aborted" in training.err.read_text() and "Traceback" not in training.err.read_text()
    assert not (tmp_path / "run" / "map.mrc").exists()  # nothing more written


# ---------------------------------------------------------------- checkpoints between two steps
def _config(star, **kw) -> ReconstructionConfig:
    settings = {"threads": 1, "restarts": 2, "restart_epochs": 1, "max_restarts": 2, "epochs": 6, "switch_epoch": 2,
                "stage2_ramp_epochs": 0, "polish_epochs": 2, "reassign_epochs": 1, "batch_size": 60, "shifts": "yes",
                "halves": True, "stage1_maps_from": 1, **kw}
    return ReconstructionConfig(particles=str(star), **settings)


def test_a_checkpoint_taken_between_two_steps_resumes_exactly_as_the_uninterrupted_run(star, tmp_path, monkeypatch):
    """Every kind of epoch, stopped after one of its steps: a restart's, stage 1's with its map, the switch's, the
    polish's (whose reference map comes back with the checkpoint)."""
    uninterrupted = Reconstruction(_config(star))
    for _ in uninterrupted:
        pass
    monkeypatch.setattr(checkpoint, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every step
    run = Reconstruction(_config(star), run_dir=tmp_path / "run")
    at = {7: "restart 2", 13: "stage 1's map", 17: "the switch", 28: "the polish", 33: "the last polish epoch"}
    for _ in run:
        if run.step_count in at:
            shutil.copytree(tmp_path / "run", tmp_path / str(run.step_count))
    for step, which in at.items():
        assert read_checkpoint(tmp_path / str(step) / "checkpoint.pt")["progress"]["losses"], which
        resumed = Reconstruction.resume(tmp_path / str(step))
        assert resumed.step_count == step and resumed.progress is not None
        for _ in resumed:
            pass
        assert torch.equal(resumed.poses, uninterrupted.poses), which
        assert np.array_equal(resumed.volume_map(), uninterrupted.volume_map()), which
        assert [m["loss"] for m in resumed.history] == [m["loss"] for m in uninterrupted.history], which
        lines = _metrics(tmp_path / str(step))
        assert [m["epoch"] for m in lines if "restart" not in m] == list(range(2, 7)), which


def test_a_truncated_checkpoint_falls_back_to_the_previous_and_says_so(star, tmp_path, caplog):
    settings = {"restarts": 1, "epochs": 3, "polish_epochs": 0}
    uninterrupted = Reconstruction(_config(star, **settings))
    for _ in uninterrupted:
        pass
    run = Reconstruction(_config(star, **settings), run_dir=tmp_path)
    for _ in run:
        pass
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # as a disk that filled up might leave it
    with caplog.at_level("WARNING", logger="napari_semiamort"):
        resumed = Reconstruction.resume(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # the CLI's tests set INFO
    assert resumed.epoch == 2 and warnings == [
        f"{tmp_path}: checkpoint.pt is incomplete or damaged (PytorchStreamReader failed reading zip archive: "
        "failed finding central directory): using checkpoint.prev.pt (written after epoch 2)"]
    for _ in resumed:  # epoch 3 again: its line in metrics.jsonl, written before, comes once
        pass
    assert [m["epoch"] for m in _metrics(tmp_path)] == [1, 2, 3]
    assert [read_checkpoint(tmp_path / name)["epoch"] for name in ("checkpoint.pt", "checkpoint.prev.pt")] == [3, 2]
    assert torch.equal(resumed.poses, uninterrupted.poses)


def test_a_checkpoint_written_by_an_earlier_version_with_numpy_arrays_still_loads(star, tmp_path):
    run = Reconstruction(_config(star, restarts=1, epochs=1, switch_epoch=1), run_dir=tmp_path)
    for _ in run:
        pass
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["data"] = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state["data"].items()}
    del state["format"], state["progress"], state["restarts"], state["rng"], state["metrics_bytes"]
    torch.save(state, tmp_path / "checkpoint.pt")  # pickles the numpy arrays, as the versions before did
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "checkpoint.pt")
    again = Reconstruction.resume(tmp_path, cache_images=False)
    assert np.array_equal(again.data.half, run.data.half) and torch.equal(again.poses, run.poses)


def test_an_interrupted_write_leaves_the_checkpoints_as_they_were(tmp_path, monkeypatch):
    checkpoint.save_checkpoint(tmp_path, {"epoch": 1})
    checkpoint.save_checkpoint(tmp_path, {"epoch": 2})
    (tmp_path / ".checkpoint.pt.abc.tmp").write_bytes(b"half")  # a write that a kill interrupted

    def failing(obj, fh):
        fh.write(b"PK\x03\x04 a few bytes, then")
        raise RuntimeError("unexpected pos")

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(RuntimeError):
        checkpoint.save_checkpoint(tmp_path, {"epoch": 3})
    assert read_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2  # whole; the one before it made room
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # the temporary files removed


# ---------------------------------------------------------------- a crafted checkpoint
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_a_crafted_checkpoint_runs_no_code_and_is_refused_in_one_line(star, tmp_path, capsys, kind):
    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    run_dir.mkdir()
    crafted = {"epoch": 1, "config": {"particles": str(star)}, "x": _Payload(marker)}
    with open(run_dir / "checkpoint.pt", "wb") as fh:
        torch.save(crafted, fh) if kind == "torch.save" else pickle.dump(crafted, fh, protocol=2)
    assert main(["reconstruct", "--resume", str(run_dir)]) == 1
    assert main(["inspect", str(run_dir)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("checkpoint.pt" in line for line in err)
    if kind == "torch.save":  # the objects named
        assert "not loaded" in err[0] and "posix.system" in err[0] and "could run code" in err[0]
    from napari_semiamort.run.session import open_run

    with pytest.raises(ValueError, match="checkpoint.pt") as refused:
        open_run(run_dir)
    assert isinstance(refused.value, UnsafeCheckpoint if kind == "torch.save" else DamagedCheckpoint)
    assert not marker.exists()
