"""The schedule owns every rule about when: the stage of each epoch and the switch, the stage-1 band, the
reassignment window, the volume's step, the batches and the step count."""

import numpy as np
import pytest
import torch

from napari_semiamort.run import Reconstruction, ReconstructionConfig
from napari_semiamort.run.schedule import (
    BAND_SNR,
    EDGE_SNR,
    STAGE1,
    STAGE2,
    AutoSwitch,
    FixedEpochSwitch,
    Schedule,
    default_band_end,
    grid_spacing_deg,
    measured_band_end,
)


def test_the_stage1_band_starts_at_five_fourier_pixels_on_large_boxes():
    """Frequency marching starts at 5 Fourier pixels (the box's width / 5 in Å) at any box from 64 up, and
    grows to 0.4 of Nyquist at the switch, at most 26 Fourier pixels and at least 10; below box 67 it starts
    from 0.15 of Nyquist as before; fractions of Nyquist given explicitly are kept. (At box 128 the old start, 0.15 of
    Nyquist = 10 px, left stage 1 at 42° median pose error on 3KPR; at box 192 the uncapped end, 38 px,
    left 47° mean error at epoch 10 against 15° capped.)"""

    def pixels(box, switch_epoch=15, **kw):
        s = Schedule(ReconstructionConfig(switch_epoch=switch_epoch, **kw), box, 100)
        return [round(s.stage1_band(e) * box / 2) for e in range(switch_epoch)]

    for box in (128, 96, 64):
        px = pixels(box)
        assert px[0] == 5 and px == sorted(px), (box, px)
        assert px[-1] == round(0.4 * box / 2), (box, px)
    assert pixels(128, autoencode_min_freq=0.15)[0] == 10
    # box 64: the schedule of every earlier result (0.15 of Nyquist, at least 5 px), at any switch
    for switch in (15, 9):
        old = [max(5, round((0.15 + e / (switch - 1) * 0.25) * 64 / 2)) for e in range(switch)]
        assert pixels(64, switch) == old, switch
    # below box 50 the end is held at 10 px (box 32: 5 → 10 px, where 0.4 of Nyquist, 6 px, left a third of the
    # tiny set's images in wrong basins), and an explicit fraction is kept
    for box in (32, 40):
        px = pixels(box)
        assert px[0] == 5 and px[-1] == 10 and px == sorted(px), (box, px)
    assert pixels(32, autoencode_max_freq=0.4)[-1] == 6
    assert Schedule(ReconstructionConfig(), 32, 100).encoder_size == 22
    assert Schedule(ReconstructionConfig(), 16, 100).stage1_end == 1.0  # 10 px is past Nyquist: the whole band
    # above box 130 the end is held at 26 px (box 128's), and the encoder's input with it
    px = pixels(192)
    assert px[0] == 5 and px[-1] == 26 and px == sorted(px)
    assert pixels(192, autoencode_max_freq=0.4)[-1] == 38  # an explicit fraction is kept
    s = Schedule(ReconstructionConfig(), 192, 100)
    assert s.stage1_end == pytest.approx(26 / 96) and s.encoder_size == 54
    # a switch at epoch 0 or 1 trains stage 1 at its end band
    assert Schedule(ReconstructionConfig(switch_epoch=1), 64, 10).stage1_band(0) == pytest.approx(0.4)


def _signal_to(shell: int, size: int, level: float = 0.1) -> np.ndarray:
    """A signal fraction S/(S+N) per shell whose spectral SNR is ``level`` to ``shell`` and 0.01 beyond."""
    snr = np.where(np.arange(size // 2 + 1) <= shell, level, 0.01)
    return snr / (1 + snr)


def test_stage1s_band_widens_where_the_data_carry_weak_signal_well_beyond_it_and_only_there():
    """Box 64's default end is 13 px: a set whose spectral SNR is weak there (< 0.15) and ≥ 0.05 to 16 px or more
    (large particles at coarse pixels in realistic noise: 80S sets 0.08 at 13 px, to 18-19 px) widens it, to at
    most 0.6 of Nyquist (19 px); 15 px leaves it, and so does a strong signal at 13 px (the clean demo's 0.18).
    Box 32 (the tiny sets, 10 px) and box 128 (26 px, the cap at any box) are never widened."""
    assert default_band_end(64) == pytest.approx(0.4) and default_band_end(32) == pytest.approx(10 / 16)
    assert default_band_end(192) == pytest.approx(26 / 96)
    assert measured_band_end(64, _signal_to(15, 64)) is None
    assert measured_band_end(64, _signal_to(16, 64)) == pytest.approx(16 / 32)
    assert measured_band_end(64, _signal_to(19, 64)) == pytest.approx(19 / 32)
    assert measured_band_end(64, _signal_to(31, 64)) == pytest.approx(19 / 32)  # capped at 0.6 of Nyquist
    assert measured_band_end(64, _signal_to(31, 64, level=EDGE_SNR)) is None  # strong at the default end
    assert measured_band_end(32, _signal_to(15, 32)) is None
    assert measured_band_end(128, _signal_to(63, 128)) is None
    weak = _signal_to(31, 64)
    weak[10] = 0.9 * BAND_SNR / (1 + 0.9 * BAND_SNR)  # one shell below the mark between two above: goes on
    assert measured_band_end(64, weak) == pytest.approx(19 / 32)
    weak[11] = weak[10]  # two in a row end the band there (at 9 px)
    assert measured_band_end(64, weak) is None
    assert measured_band_end(64, np.full(33, np.nan)) is None  # no measurement: the default


def test_a_run_on_a_weak_coarse_pixel_set_widens_stage1s_band_and_keeps_it_when_resumed(ribosome_images, tmp_path,
                                                                                      capsys):
    """The bundled 80S ribosome at box 64 and 8.3 Å/px (the demo's images) at half the demo's SNR: weak signal at
    13 px that goes on beyond, so stage 1 ends further out; the CLI says so, the band is written into the run's
    config, and a resume keeps it. At the demo's SNR (strong at 13 px) and with a band set by hand the band is
    the default."""
    from napari_semiamort.cli.main import main

    data = ribosome_images(tmp_path / "weak", n_particles=400, box=64, snr=0.05, seed=3)
    assert main(["reconstruct", str(data / "particles.star"), "-o", str(tmp_path / "run"), "--epochs", "1",
                 "--switch-epoch", "1", "--restarts", "1"]) == 0
    assert "stage 1's band: to 1" in capsys.readouterr().out  # 16-19 Fourier px
    saved = ReconstructionConfig.load(tmp_path / "run" / "config.json").autoencode_max_freq
    assert 16 / 32 <= saved <= 19 / 32
    assert Reconstruction.resume(tmp_path / "run", epochs=2).stage1_end == saved
    # measured over the whole band whatever stage 2's: within 0.6 of Nyquist its last shell was half sampled
    lower = ReconstructionConfig(particles=str(data / "particles.star"), max_freq=0.6, restarts=1)
    assert Reconstruction(lower).stage1_end == saved
    hand = ReconstructionConfig(particles=str(data / "particles.star"), autoencode_max_freq=0.4, restarts=1)
    assert Reconstruction(hand).stage1_end == pytest.approx(0.4)
    demo = ribosome_images(tmp_path / "demo", n_particles=400, box=64, snr=0.1, seed=3)
    run = Reconstruction(ReconstructionConfig(particles=str(demo / "particles.star"), restarts=1))
    assert run.config.autoencode_max_freq is None and run.stage1_end == pytest.approx(0.4)


def test_the_fixed_rule_switches_at_its_epoch_and_a_switched_run_stays_in_stage_2():
    s = Schedule(ReconstructionConfig(epochs=6, switch_epoch=3), 32, 100)
    assert [s.stage(e, None, []) for e in range(6)] == [STAGE1] * 3 + [STAGE2] * 3
    assert s.stage(1, 1, []) == STAGE2  # once switched (by any rule), stage 2 for good


def test_the_volume_step_is_stage_1s_then_decays_linearly_from_the_switch():
    cfg = ReconstructionConfig(epochs=25, switch_epoch=15, volume_lr=0.05, volume_lr_autodecode=0.005,
                               volume_lr_final_fraction=0.1, switch="fixed")
    s = Schedule(cfg, 32, 100)
    assert s.volume_lr(3, None) == 0.05
    lrs = [s.volume_lr(e, 15) for e in range(15, 25)]
    assert lrs[0] == pytest.approx(0.005)
    np.testing.assert_allclose(np.diff(lrs), np.diff(lrs)[0])  # linear
    assert lrs[-1] == pytest.approx(0.005 * (1 - 0.9 * 9 / 10))  # reaching 10 % one epoch after the last
    # an earlier switch stretches the decay over the longer stage 2
    assert s.volume_lr(24, 5) == pytest.approx(0.005 * (1 - 0.9 * 19 / 20))


def test_the_reassignment_runs_in_the_epochs_after_the_switch_only():
    s = Schedule(ReconstructionConfig(epochs=10, switch_epoch=4, reassign_epochs=3), 32, 100)
    assert [s.reassigns(e, 4) for e in range(5, 10)] == [True, True, False, False, False]
    assert s.reassign_band(None) == s.stage1_end
    assert Schedule(ReconstructionConfig(reassign_max_freq=0.8), 32, 100).reassign_band(None) == 0.8


def test_the_polish_takes_stage_2s_last_epochs_after_the_band_ramp_and_the_reassignment():
    s = Schedule(ReconstructionConfig(), 64, 100)  # defaults: 25 epochs, the switch at 15, the ramp 5, polish 4
    assert [e for e in range(25) if s.polishes(e, 15)] == [21, 22, 23, 24]
    assert not any(s.polishes(e, None) for e in range(25))  # never in stage 1
    longer = Schedule(ReconstructionConfig(polish_epochs=9), 64, 100)  # never the ramp's or the reassignment's
    assert [e for e in range(25) if longer.polishes(e, 15)] == [20, 21, 22, 23, 24]
    assert not any(Schedule(ReconstructionConfig(polish_epochs=0), 64, 100).polishes(e, 15) for e in range(25))
    short = Schedule(ReconstructionConfig(epochs=6, switch_epoch=3), 32, 100)  # stage 2 all ramp: no polish
    assert not any(short.polishes(e, 3) for e in range(6))
    auto = Schedule(ReconstructionConfig(switch="auto", switch_min_epoch=10, switch_max_epoch=20, restarts=1), 64, 100)
    assert auto.end(12) == 22  # the run's end moved with the switch, and the polish with it
    assert [e for e in range(22) if auto.polishes(e, 12)] == [18, 19, 20, 21]
    with pytest.raises(ValueError, match="polish_epochs must be at least 0"):
        ReconstructionConfig(polish_epochs=-1).validate()


@pytest.mark.parametrize("n, bs, steps", [(100, 32, 4), (97, 32, 3), (64, 32, 2), (1, 32, 1)])
def test_each_epochs_batches_cover_every_image_once_and_a_lone_last_image_joins_the_batch_before(n, bs, steps):
    s = Schedule(ReconstructionConfig(batch_size=bs, seed=3), 32, n)
    batches = s.batches(2, STAGE1)
    assert len(batches) == s.steps_per_epoch(STAGE1) == steps
    assert sorted(torch.cat(batches).tolist()) == list(range(n))
    assert all(len(b) >= 2 for b in batches) or n == 1
    again, other = s.batches(2, STAGE1), s.batches(3, STAGE1)
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    assert n < 3 or not torch.equal(torch.cat(batches), torch.cat(other))  # a new order every epoch


def test_the_step_count_covers_both_stages_and_the_planned_restarts():
    cfg = ReconstructionConfig(epochs=10, switch_epoch=6, batch_size=10, stage2_batch_size=25, restarts=3,
                               restart_epochs=2)
    s = Schedule(cfg, 32, 100)
    assert s.batch_size(STAGE1) == 10 and s.batch_size(STAGE2) == 25
    assert s.restarts_enabled
    assert s.total_steps(3) == (6 + 2 * 2) * 10 + 4 * 4
    assert s.total_steps(4) == s.total_steps(3) + 2 * 10  # an added restart adds its epochs
    assert not Schedule(ReconstructionConfig(restarts=3, restart_epochs=6, switch_epoch=6), 32, 100).restarts_enabled


class _SwitchAfterEpoch:
    """A rule of another kind: it looks at the history (switches once an epoch has been logged)."""

    planned = 2

    def __init__(self):
        self.asked: list[tuple[int, int]] = []

    def switches(self, epoch, history):
        self.asked.append((epoch, len(history)))
        return len(history) >= 1


def test_a_run_switches_when_its_switch_rule_says_so(tiny_dataset):
    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), epochs=3, switch_epoch=3, heads=2,
                               threads=1, restarts=1, reassign_epochs=2, batch_size=250)
    run = Reconstruction(cfg)
    rule = run.schedule.switch = _SwitchAfterEpoch()
    ends = [s.metrics for s in run if s.epoch_end]
    assert [m["stage"] for m in ends] == [STAGE1, STAGE2, STAGE2]
    assert "reassigned" in ends[2]  # the window counts from the switch the rule made, not switch_epoch
    assert rule.asked == [(0, 0), (1, 1)]  # asked at each stage-1 epoch's start, never after the switch
    assert isinstance(Schedule(cfg, 32, 10).switch, AutoSwitch)  # the config's own rule: the default's
    # a run folder's config from before the automatic switch keeps the fixed rule it ran with
    legacy = {k: v for k, v in cfg.to_dict().items() if k not in ("switch", "switch_min_epoch", "switch_max_epoch")}
    assert ReconstructionConfig.from_dict(legacy).switch == "fixed"


def test_stage2s_band_ramps_from_stage1s_to_max_freq_when_asked():
    from napari_semiamort.run.config import ReconstructionConfig
    from napari_semiamort.run.schedule import Schedule

    off = Schedule(ReconstructionConfig(stage2_ramp_epochs=0), 64, 1000)
    assert [off.stage2_band_at(e, 15) for e in (15, 16, 24)] == [1.0, 1.0, 1.0]
    ramp = Schedule(ReconstructionConfig(stage2_ramp_epochs=4), 64, 1000)
    bands = [ramp.stage2_band_at(e, 15) for e in range(15, 21)]
    assert bands[0] == round(ramp.stage1_end * 32) / 32 and bands[4:] == [1.0, 1.0]  # 13 px
    assert all(a < b for a, b in zip(bands[:4], bands[1:5], strict=True))  # growing
    assert all(round(b * 32) == b * 32 for b in bands)  # whole Fourier pixels


def test_a_run_with_the_stage2_ramp_learns_the_noise_of_the_band_it_sees(tiny_dataset):
    """Stage 2 on a narrower band than the noise model's: the residual noise estimate takes the shells it saw
    (and keeps the others), and the run completes with finite losses and noise."""
    import math

    import torch

    from napari_semiamort.run import Reconstruction, ReconstructionConfig

    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), epochs=3, switch_epoch=1, heads=2,
                               threads=1, restarts=1, batch_size=250, stage2_ramp_epochs=2,
                               noise_model="shell-residual")
    run = Reconstruction(cfg)
    before = run.noise.variance.clone()
    ends = [s.metrics for s in run if s.epoch_end]
    assert len(ends) == 3 and all(math.isfinite(m["loss"]) for m in ends)
    assert torch.isfinite(run.noise.variance).all()
    ramp_band = run.schedule.stage2_band_at(1, 1)
    assert ramp_band < 1.0
    assert not torch.equal(run.noise.variance, before)


def _stage1(changes, bands=None):
    """A stage-1 history whose epochs' mean pose changes are ``changes`` (at the band fractions ``bands``; default
    one band throughout)."""
    bands = [0.4] * len(changes) if bands is None else bands
    return [{"stage": STAGE1, "pose_change_deg": c, "band_fraction": b} for c, b in zip(changes, bands, strict=True)]


def test_the_auto_rule_switches_once_the_images_keep_their_grid_cells_and_at_the_bands_end_at_the_latest():
    rule = AutoSwitch(earliest=10, planned=15, settled_deg=7.5)
    assert not rule.switches(9, _stage1([9.0, 5.0]))  # never before the earliest epoch
    assert rule.switches(10, _stage1([9.0, 5.0]))  # under half the grid's 15°: the images keep their cells
    assert not rule.switches(10, _stage1([5.0, 7.5]))  # judged on the last epoch: still moving
    still_hopping = _stage1([40, 30, 24, 20, 17])  # a realistic set: the symmetry breaks late
    assert not rule.switches(14, still_hopping) and rule.switches(15, still_hopping)  # the fixed schedule's end
    # a restart's rows (another start's poses) and stage 2's do not count; nor does an empty history (resumed)
    assert not rule.switches(10, [{"stage": STAGE1, "pose_change_deg": 1.0, "restart": 2}])
    assert not rule.switches(10, [{"stage": STAGE2, "pose_change_deg": 1.0}]) and not rule.switches(10, [])
    assert AutoSwitch(earliest=20, planned=15, settled_deg=7.5).earliest == 15  # never after the band's end
    s = Schedule(ReconstructionConfig(search_nside=4, search_inplane=24), 64, 100)  # the default rule
    assert isinstance(s.switch, AutoSwitch)
    assert s.switch.settled_deg == pytest.approx(0.5 * 15.0) and s.switch.planned == 15 and s.switch.earliest == 10
    # never later than the fixed rule: a short run's switch epoch under the earliest is where it switches
    short = Schedule(ReconstructionConfig(epochs=4, switch_epoch=2), 32, 100).switch
    assert short.planned == short.earliest == 2
    assert Schedule(ReconstructionConfig(switch_epoch=30, epochs=40), 64, 100).switch.planned == 20  # at most max
    assert isinstance(Schedule(ReconstructionConfig(switch="fixed"), 64, 100).switch, FixedEpochSwitch)
    assert grid_spacing_deg(4, 24) == pytest.approx(15.0) and grid_spacing_deg(8, 24) == pytest.approx(15.0)
    assert grid_spacing_deg(8, 96) == pytest.approx(7.33, abs=0.01)  # the directions' spacing, nside 8


def test_an_early_switch_starts_stage_2_from_the_band_it_reached():
    """Switched before the band's end, stage 2's ramp, the reassignment and the polish start from stage 1's last
    band, not from the end it never reached (its shells untrained); at or after the end, from the end."""
    s = Schedule(ReconstructionConfig(switch="auto", switch_min_epoch=10, switch_epoch=15, stage2_ramp_epochs=3),
                 64, 100)
    early = s.stage1_band(9)  # the last stage-1 epoch's band of a switch at 10
    assert early < s.stage1_end
    assert s.switch_band(10) == early == s.reassign_band(10) == s.stage2_band_at(10, 10)
    assert early < s.stage2_band_at(11, 10) < s.stage2_band_at(12, 10) < s.stage2_band_at(13, 10) == s.stage2_band
    assert s.switch_band(15) == s.switch_band(None) == s.stage1_end == s.reassign_band(15)
    fixed = Schedule(ReconstructionConfig(switch_epoch=15), 64, 100)
    assert fixed.switch_band(15) == fixed.stage1_end  # stage 2 starts from it, in whole Fourier pixels
    assert fixed.stage2_band_at(15, 15) == round(fixed.stage1_end * 32) / 32


def test_the_auto_rule_moves_the_runs_end_so_stage_2_keeps_its_length():
    cfg = ReconstructionConfig(epochs=25, switch_epoch=15, switch="auto", switch_min_epoch=10, switch_max_epoch=20,
                               batch_size=10, stage2_batch_size=25, restarts=1)
    s = Schedule(cfg, 64, 100)
    assert isinstance(s.switch, AutoSwitch) and s.switch.planned == 15 and s.switch.earliest == 10
    # the band grows as under the fixed rule, to its end (whole Fourier pixels) by the planned switch
    assert s.stage1_band(9) < s.stage1_band(13) < s.stage1_band(14) == round(s.stage1_end * 32) / 32
    assert s.end(None) == 25 and s.end(12) == 22  # 10 stage-2 epochs after the switch, wherever it falls
    assert s.total_steps(1) == 15 * 10 + 10 * 4 and s.total_steps(1, 12) == 12 * 10 + 10 * 4
    assert s.volume_lr(21, 12) == pytest.approx(cfg.volume_lr_autodecode * (1 - 0.9 * 9 / 10))
    fixed = Schedule(ReconstructionConfig(epochs=25, switch_epoch=15, switch="fixed"), 32, 100)
    assert fixed.end(None) == fixed.end(12) == 25  # the fixed rule's run ends at epochs
    with pytest.raises(ValueError, match="switch must be"):
        ReconstructionConfig(switch="later").validate()
    with pytest.raises(ValueError, match="switch_min_epoch"):
        ReconstructionConfig(switch_min_epoch=12, switch_max_epoch=11).validate()


def test_a_run_with_the_auto_switch_trains_stage_2_for_its_length_after_the_switch(tiny_dataset, tmp_path):
    """Switched by the rule (here at the band's end: 2 stage-1 epochs), then stage 2's length; the progress ends
    at 1 and the log names the switch."""
    from napari_semiamort.cli.reconstruct import format_metrics

    cfg = ReconstructionConfig(particles=str(tiny_dataset / "particles.star"), epochs=4, switch_epoch=2,
                               switch="auto", switch_min_epoch=2, switch_max_epoch=3, heads=2, threads=1,
                               restarts=1, reassign_epochs=0, batch_size=250)
    run = Reconstruction(cfg, run_dir=tmp_path)
    snaps = list(run)
    assert [m["stage"] for m in run.history] == [STAGE1] * 2 + [STAGE2] * 2  # switched at 2, then 2 epochs
    assert run.state.switched_at == 2 and snaps[-1].epochs == 4
    assert snaps[-1].progress == 1.0 and run.step_count == run.total_steps
    assert "switched after 2 stage-1 epochs" in format_metrics(run.history[2])
    resumed = Reconstruction.resume(tmp_path, epochs=5)  # more epochs: a longer stage 2 after the same switch
    assert [s for s in resumed][-1].progress == 1.0 and resumed.epoch == 5
