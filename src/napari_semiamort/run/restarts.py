"""Which of several stage-1 initialisations goes on.

Whether stage 1 breaks the symmetry of its blurry start depends on the initialisation (on 4ZXB, seeds 0, 1
and 2 reached FSC 77, 35 and 27 Å against the truth), so a few short starts are trained and one goes on.

Two signals choose it. **Loss**: the lowest loss goes on. **Agreement** confirms it: two starts that both found
the structure give each image the same pose up to one rotation of the whole map (and its hand), so their poses,
aligned, differ by little; starts that did not break the symmetry disagree with every other start by ~70-120°
(clean 3KPR, epoch 5: the three that broke it agreed within 21-22° median and had the three lowest losses, every
other pair 38-121°). Agreement counts only where it is well below the agreement of the same poses shuffled among
the images (poses collapsed onto a few views agree either way). Once the lowest-loss start agrees with another, no
more starts are added. Agreement does not outrank the loss: on the tiny test set (ribosome, box 32) two starts
that fell into the same wrong, pseudo-symmetric basin agreed within 16-28° while 50-80° from the truth, with
losses 0.8-5 % above the lowest; keeping that pair ended at 51° and 55° median (seeds 0 and 3), the lowest loss
at 7° and 4° (docs/results.md, "Restarts: the loss first"). When the lowest-loss start agrees with none and its
loss is not ``restart_margin`` below the median of the others, more starts follow, one at a time, up to
``max_restarts`` (at boxes 96-192 a start that broke the symmetry stood 12-27 % below the others, one that had
not within 3 %). On realistic 3KPR (SNR 0.05) no start had broken the symmetry by epoch 5 and every pair
disagreed by 112-129°. The policy holds one start's state at a time, the lowest loss's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch

from ..metrics.alignment import align_poses
from .config import ReconstructionConfig

__all__ = ["AGREEMENT_DEG", "AGREEMENT_MIN_EPOCHS", "AGREEMENT_NULL_FRACTION", "AGREEMENT_SAMPLE",
           "RESTART_SEED_STRIDE", "RestartPolicy", "restart_gap", "train_restarts"]

RESTART_SEED_STRIDE = 7919  # restart k starts from seed + 7919 k (a prime: the seeds never coincide)
# Two starts agree when their poses, aligned (one rotation, either hand), differ by less than this median angle:
# between the 21-22° of starts that both broke the symmetry and the 38° and more of a start that had half done so
# (clean 3KPR, epoch 5; docs/method.md, benchmarks/results/restart_agreement.json)
AGREEMENT_DEG = 30.0
# ... and by less than this fraction of what they differ by with the images' poses shuffled: starts whose poses
# collapsed onto a few views (after one epoch, say) "agree" trivially, and shuffled they still do
AGREEMENT_NULL_FRACTION = 0.5
AGREEMENT_SAMPLE = 4096  # images (a seeded sample) the starts' poses are compared on
# Agreement is judged only after this many epochs per start: after one, two starts of the tiny test set agreed
# within 26° (80° shuffled) while both were ~112° from the truth, the heads' common spread start still showing
AGREEMENT_MIN_EPOCHS = 3


def restart_gap(losses: list[float]) -> float:
    """How far the lowest loss lies below the median of the others, relative to that median (inf for a single
    loss). Against the median rather than the runner-up: two starts that both broke the symmetry are close to
    each other but still stand below the rest."""
    if len(losses) < 2:
        return float("inf")
    first, *others = sorted(losses)
    typical = float(np.median(others))
    return (typical - first) / typical if typical > 0 else 0.0


class RestartPolicy:
    """Plans the restarts and keeps the chosen one's state (one copy at a time)."""

    def __init__(self, config: ReconstructionConfig, n_images: int):
        self.config = config
        self.planned = config.restarts  # grows while no two starts agree and no loss stands out
        self.losses: list[float] = []
        gen = np.random.default_rng(config.seed)
        self.sample = torch.from_numpy(np.sort(gen.choice(n_images, min(n_images, AGREEMENT_SAMPLE), replace=False)))
        self.poses: list[torch.Tensor] = []  # each start's poses on the sample
        self.disagreement: dict[tuple[int, int], float] = {}  # (i, j) → median angle between their poses
        self.shuffled: dict[tuple[int, int], float] = {}  # ... with one start's poses shuffled among the images
        self._perm = torch.from_numpy(gen.permutation(len(self.sample)))
        self.best: dict | None = None  # the chosen start's state
        self.chosen: int | None = None

    def seed(self, k: int) -> int:
        return self.config.seed + RESTART_SEED_STRIDE * k

    def agreeing(self, k: int) -> list[int]:
        """The starts that agree with start ``k``."""
        return [j for pair in self._agreeing_pairs() if k in pair for j in pair if j != k]

    def _agreeing_pairs(self) -> list[tuple[int, int]]:
        if self.config.restart_epochs < AGREEMENT_MIN_EPOCHS:
            return []
        return [pair for pair, d in self.disagreement.items()
                if d < min(AGREEMENT_DEG, AGREEMENT_NULL_FRACTION * self.shuffled[pair])]

    def record(self, loss: float, state: dict) -> None:
        """Restart number ``len(losses)`` ended at ``loss`` with ``state`` (kept when it is the choice so far)."""
        k = len(self.losses)
        self.losses.append(loss)
        poses = state["poses"][self.sample].clone()
        for j, other in enumerate(self.poses):
            self.disagreement[(j, k)] = align_poses(poses, other).median_error
            self.shuffled[(j, k)] = align_poses(poses, other[self._perm]).median_error
        self.poses.append(poses)
        if self.chosen is None or self._better(k, self.chosen):
            self.chosen, self.best = k, state
        cfg = self.config
        k += 1
        if (k == self.planned and k < cfg.max_restarts and not self.disagreement_resolved()
                and restart_gap(self.losses) < cfg.restart_margin):
            self.planned += 1

    def _better(self, k: int, chosen: int) -> bool:
        """Whether start ``k`` goes on rather than ``chosen``: the lower loss (agreement only confirms it)."""
        return self.losses[k] < self.losses[chosen]

    def disagreement_resolved(self) -> bool:
        """Whether the chosen (lowest-loss) start agrees with another (no more are added)."""
        return self.chosen is not None and bool(self.agreeing(self.chosen))

    @property
    def done(self) -> bool:
        return len(self.losses) >= self.planned

    def take_best(self) -> dict:
        """The chosen restart's state, handed over once (the policy keeps no copy)."""
        state, self.best = self.best, None
        return state

    def summary(self, chosen: int) -> dict:
        """The record the last restart epoch's metrics carry."""
        pairs = {f"{a + 1}-{b + 1}": round(d, 2) for (a, b), d in sorted(self.disagreement.items())}
        return {"chosen_restart": chosen, "restart_losses": [round(x, 6) for x in self.losses],
                "restart_gap": round(restart_gap(self.losses), 6), "restart_disagreement_deg": pairs,
                "restart_agrees_with": sorted(set(self.agreeing(chosen)))}

    def state_dict(self) -> dict:
        """The record so far (each start's loss and poses on the sample, the pairs' angles, the choice and its
        state), for a checkpoint taken while the restarts run: the resumed run ends the selection the same way."""
        pairs = [[i, j, d, self.shuffled[(i, j)]] for (i, j), d in self.disagreement.items()]
        return {"planned": self.planned, "losses": list(self.losses), "poses": list(self.poses), "pairs": pairs,
                "chosen": self.chosen, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.planned, self.losses, self.poses = int(state["planned"]), list(state["losses"]), list(state["poses"])
        self.disagreement = {(int(i), int(j)): float(d) for i, j, d, _ in state["pairs"]}
        self.shuffled = {(int(i), int(j)): float(s) for i, j, _, s in state["pairs"]}
        self.chosen, self.best = state["chosen"], state["best"]

    def resumed(self, history: list[dict]) -> None:
        """A resumed run counts the restarts it tried (a checkpoint taken during the restarts has no record and
        leaves the count as it is)."""
        tried = [len(m["restart_losses"]) for m in history if "restart_losses" in m]
        if tried:
            self.planned = max(self.config.restarts, tried[-1])


def train_restarts(run) -> Iterator:
    """Train ``run``'s initialisations (a :class:`~napari_semiamort.run.Reconstruction`'s) for ``restart_epochs``
    epochs each, as its :class:`RestartPolicy` plans them, yielding their steps' snapshots; then go on from the
    chosen one. A run resumed (or iterated again) during the restarts goes on with the start it was training."""
    policy = run.restarts
    while not policy.done:
        if run.trial != (k := len(policy.losses)):  # a new start
            run.trial = k
            if k > 0:
                run._initialise(policy.seed(k))
        yield from run._epochs(run.config.restart_epochs)
        policy.record(run.state.history[-1]["loss"], copy.deepcopy(run.state_dict()))
    run.trial = None
    steps = run.step_count
    best = policy.take_best()  # the copy is let go: at box 512 a volume and its moments are 3 GB
    run.load_state_dict(best)
    run.step_count = steps  # the steps of every restart were taken
    run.state.history[-1].update(policy.summary(best["trial"]))
    if run.run_dir is not None:
        run.save_checkpoint()
