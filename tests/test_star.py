"""RELION STAR files: the real files in tests/data (3.0, 3.1, 5, several optics groups), round trips and
the errors a user sees for bad input."""

import logging
import shutil

import numpy as np
import pytest
import starfile
import torch

from conftest import DATA
from napari_semiamort.data.mrc import write_mrc
from napari_semiamort.data.particles import ParticleTable
from napari_semiamort.data.star import angles_to_matrices, matrices_to_angles, read_star, write_star
from napari_semiamort.physics.so3 import geodesic_distance

META = DATA / "relion_meta"


def _angles(path):
    df = starfile.read(path, always_dict=True)
    df = df.get("particles", next(v for v in df.values() if "rlnImageName" in v.columns))
    return df, df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)


def test_relion30_star_takes_the_pixel_size_from_magnification_and_detector_and_origins_in_pixels():
    t = read_star(META / "relion_tests_out_it005_data.star", require_stacks=False)
    df, ang = _angles(META / "relion_tests_out_it005_data.star")
    assert len(t) == 9
    assert t.pixel_size == pytest.approx(14 * 1e4 / 39548)
    np.testing.assert_allclose(t.origins[:, 0], df["rlnOriginX"].to_numpy() * t.pixel_size)
    np.testing.assert_allclose(t.origins[:, 1], df["rlnOriginY"].to_numpy() * t.pixel_size)
    np.testing.assert_allclose(t.rotations, angles_to_matrices(ang))
    np.testing.assert_allclose(t.ctf["rlnDefocusU"], df["rlnDefocusU"].to_numpy())
    assert t.ctf_missing == []


def test_six_optics_groups_give_each_particle_its_groups_voltage_and_cs(caplog):
    path = META / "relion31.6opticsgroups.star"
    with caplog.at_level(logging.WARNING, logger="napari_semiamort"):
        t = read_star(path, require_stacks=False)
    blocks = starfile.read(path, always_dict=True)
    optics = blocks["optics"].set_index("rlnOpticsGroup")
    groups = blocks["particles"]["rlnOpticsGroup"].to_numpy()
    np.testing.assert_allclose(t.ctf["rlnSphericalAberration"], optics.loc[groups, "rlnSphericalAberration"])
    np.testing.assert_allclose(t.ctf["rlnVoltage"], optics.loc[groups, "rlnVoltage"])
    assert set(np.unique(t.optics_group)) == set(optics.index)
    assert t.box == 196
    # Pixel sizes 1.24 to 1.25 Å in one file: the median is used and the spread is reported.
    assert 1.24 <= t.pixel_size <= 1.25
    assert "rlnImagePixelSize ranges" in caplog.text


def test_relion5_star_with_version_50001_reads_with_its_optics():
    t = read_star(META / "relion5.star", require_stacks=False)
    assert len(t) == 17 and t.pixel_size == pytest.approx(0.89) and t.box == 448
    assert t.ctf["rlnVoltage"][0] == pytest.approx(100)


def test_two_stars_for_one_dataset_give_their_two_pixel_sizes():
    """EMPIAR-10017's 3.0 STAR implies 1.338 Å, its 3.1 STAR says 1.4 Å: each is read as written."""
    t30 = read_star(META / "sample_particles_relion30.star", require_stacks=False)
    t31 = read_star(META / "sample_particles_relion31.star", require_stacks=False)
    assert t30.pixel_size == pytest.approx(1.338, abs=1e-3) and t31.pixel_size == pytest.approx(1.4)
    # Per-particle voltages in the 3.0 file (rows 9-17 at 200 kV) and per-group ones in the 3.1 file.
    assert set(np.unique(t30.ctf["rlnVoltage"])) == {200.0, 300.0}
    assert set(np.unique(t31.ctf["rlnVoltage"])) == {200.0, 300.0}


def test_unset_angles_mean_no_pose():
    t = read_star(META / "cryojax_ribosome_4ug0_particles.star", require_stacks=False)
    assert t.rotations is None and t.origins is None


def test_old_pixel_origins_are_used_when_a_file_has_no_angstrom_origins():
    from conftest import SHARED

    t = read_star(SHARED / "particles" / "relion_project_70S" / "rln_proj_64_shifted.star")
    np.testing.assert_allclose(t.origins, [[6, 10], [10, -5], [-8, 11], [-13, -3]])  # 1 Å/px


@pytest.mark.parametrize("name", ["relion31.6opticsgroups.star", "relion5.star", "relion_tests_out_it005_data.star",
                                  "sample_particles_relion31.star", "optics_group_inter1965.star"])
def test_star_to_our_poses_to_star_keeps_angles_shifts_ctf_and_other_columns(tmp_path, name):
    src = META / name
    t = read_star(src, require_stacks=False)
    out = write_star(tmp_path / "out.star", t, box=t.box or 200)  # 3.0 files do not state the box
    back = read_star(out, require_stacks=False)
    assert len(back) == len(t)
    # The angles written are the same rotations (1e-4° as angles, compared as rotations: a triple is not
    # unique at tilt 0 or 180), and the same triple where tilt is away from the poles.
    err = torch.rad2deg(geodesic_distance(torch.from_numpy(t.rotations), torch.from_numpy(back.rotations)))
    assert float(err.max()) < 1e-4
    _, ang_in = _angles(src)
    ang_out = _angles(out)[1]
    generic = (ang_in[:, 1] > 1) & (ang_in[:, 1] < 179)
    d = (ang_out - ang_in + 180) % 360 - 180
    assert np.abs(d[generic]).max() < 1e-4
    np.testing.assert_allclose(back.origins, t.origins, atol=1e-4)
    for k in t.ctf:
        np.testing.assert_allclose(back.ctf[k], t.ctf[k], atol=1e-4)
    for k, v in t.extra.items():
        if not k.startswith("_") and k != "rlnRandomSubset":
            assert k in back.extra, k
            if v.dtype.kind == "f":
                np.testing.assert_allclose(back.extra[k].astype(float), v, atol=1e-4)
            else:
                assert [str(x) for x in back.extra[k]] == [str(x) for x in v]
    assert back.pixel_size == pytest.approx(t.pixel_size, rel=1e-6)


def test_written_star_has_a_relion31_optics_table_and_absolute_image_paths(tmp_path):
    t = read_star(META / "relion31.6opticsgroups.star", require_stacks=False)
    out = write_star(tmp_path / "p.star", t)
    text = out.read_text()
    assert "# version 30001" in text and "data_optics" in text and "data_particles" in text
    blocks = starfile.read(out, always_dict=True)
    assert len(blocks["optics"]) == 6
    assert set(blocks["optics"]["rlnOpticsGroupName"]) == set(starfile.read(
        META / "relion31.6opticsgroups.star", always_dict=True)["optics"]["rlnOpticsGroupName"])
    assert all(str(n).split("@", 1)[1].startswith("/") for n in blocks["particles"]["rlnImageName"])


def test_euler_matrix_round_trip_in_float64_is_exact_to_1e10_degrees(generator):
    ang = torch.rand(1000, 3, generator=generator, dtype=torch.float64).numpy() * [360, 178, 360] + [-180, 1, -180]
    back = matrices_to_angles(angles_to_matrices(ang))
    assert np.abs((back - ang + 180) % 360 - 180).max() < 1e-10


def test_written_star_is_refused_over_an_existing_file_without_force(tmp_path):
    t = read_star(META / "relion5.star", require_stacks=False)
    write_star(tmp_path / "p.star", t)
    with pytest.raises(FileExistsError, match="--force"):
        write_star(tmp_path / "p.star", t)
    write_star(tmp_path / "p.star", t, force=True)


# ---------------------------------------------------------------- real stacks
def test_real_relion30_star_with_its_mrc_stack_reads_and_prepares(tmp_path):
    from napari_semiamort.data.dataset import ParticleDataset

    t = read_star(DATA / "empiar_10076_7.star")
    assert t.stacks[0].name == "empiar_10076_7.mrc" and len(t) == 7
    assert t.pixel_size == pytest.approx(1.31, abs=1e-3)  # the header says 0: the STAR's value is used
    d = ParticleDataset(t, box=64).scan()
    x = d.read(np.arange(7))
    assert x.shape == (7, 64, 64) and torch.isfinite(x).all()
    assert d.pixel_size == pytest.approx(1.31 * 320 / 64, abs=1e-2)


def test_a_star_pointing_at_the_wrong_stack_name_says_which_file_is_missing():
    """trpv1's STAR names './batch_0_restacked.mrc', not the stack beside it (a known quirk)."""
    with pytest.raises(FileNotFoundError, match="batch_0_restacked.mrc.*--datadir"):
        read_star(DATA / "trpv1_10" / "trpv1_small_stack.star")


def test_a_corrected_trpv1_star_reads_its_real_particles_with_optics_group_7(tmp_path):
    from napari_semiamort.data.dataset import ParticleDataset

    shutil.copy(DATA / "trpv1_10" / "trpv1_small_stack.mrcs", tmp_path)
    text = (DATA / "trpv1_10" / "trpv1_small_stack.star").read_text()
    (tmp_path / "p.star").write_text(text.replace("./batch_0_restacked.mrc", "trpv1_small_stack.mrcs"))
    t = read_star(tmp_path / "p.star")
    assert len(t) == 10 and t.pixel_size == pytest.approx(4.88) and set(t.optics_group) == {7}
    d = ParticleDataset(t).scan()
    assert d.box == 48 and d.read(np.arange(10)).shape == (10, 48, 48)


def test_tilt_series_star_reads_from_truncated_stacks_when_the_images_it_names_are_there():
    """Warp/M's stacks declare 11,029 images but hold one; the STAR asks only for image 1 of each."""
    from napari_semiamort.data.dataset import ParticleDataset

    t = read_star(DATA / "m_tilts" / "M_particles_sub10.star")
    d = ParticleDataset(t).scan()
    assert len(d) == 10 and d.read(np.arange(10)).shape == (10, 128, 128)


# ---------------------------------------------------------------- bad input
def _star(tmp_path, names, extra=""):
    rows = "\n".join(f"{n} 10000 9000 0 300 2.7 0.1 1.5" for n in names)
    p = tmp_path / "p.star"
    p.write_text("data_particles\n\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n"
                 f"_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n_rlnImagePixelSize\n{rows}\n{extra}")
    return p


def _dataset(path, **kw):
    from napari_semiamort.data.dataset import ParticleDataset

    return ParticleDataset(read_star(path), **kw)


def test_a_star_without_image_names_is_refused_naming_the_column(tmp_path):
    with pytest.raises(ValueError, match=r"postprocess\.star: no particle table with an rlnImageName"):
        read_star(META / "postprocess.star")


def test_an_empty_star_is_refused(tmp_path):
    p = tmp_path / "empty.star"
    p.write_text("data_particles\n\nloop_\n_rlnImageName\n_rlnDefocusU\n")
    with pytest.raises(ValueError, match="empty.star: the particle table is empty"):
        read_star(p)


def test_a_star_referring_to_missing_stacks_lists_the_first_few():
    with pytest.raises(FileNotFoundError, match=r"139 of 139 particle stacks not found: .*shiny\.mrcs.* and 136 more"):
        read_star(META / "relion31.6opticsgroups.star")


def test_an_index_past_the_end_of_a_stack_is_refused(tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.zeros((3, 16, 16), np.float32), 2.0)
    with pytest.raises(ValueError, match=r"p\.star: image 5 requested from .*s\.mrcs, which holds 3 images"):
        _dataset(_star(tmp_path, ["1@s.mrcs", "5@s.mrcs"]))


def test_a_truncated_stack_is_named_when_a_missing_image_is_asked_for(tmp_path):
    src = DATA / "m_tilts" / "00256_Ribosomes_1.70A.mrcs"
    shutil.copy(src, tmp_path / "t.mrcs")
    with pytest.raises(ValueError, match=r"t\.mrcs: truncated: the header declares 11029 images .* only 1 complete"):
        _dataset(_star(tmp_path, ["1@t.mrcs", "2@t.mrcs"]))


def test_an_mrc_with_a_bad_header_is_refused(tmp_path):
    (tmp_path / "s.mrcs").write_bytes(b"not an mrc file at all" * 100)
    with pytest.raises(ValueError, match=r"s\.mrcs: not a readable MRC stack"):
        _dataset(_star(tmp_path, ["1@s.mrcs"]))


def test_non_square_images_are_refused(tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.zeros((2, 16, 20), np.float32), 2.0)
    with pytest.raises(ValueError, match=r"s\.mrcs: images are not square \(16 × 20"):
        _dataset(_star(tmp_path, ["1@s.mrcs"]))


def test_mixed_box_sizes_are_refused(tmp_path):
    write_mrc(tmp_path / "a.mrcs", np.zeros((2, 16, 16), np.float32), 2.0)
    write_mrc(tmp_path / "b.mrcs", np.zeros((2, 24, 24), np.float32), 2.0)
    with pytest.raises(ValueError, match=r"p\.star: mixed box sizes: .*a\.mrcs has 16 px, .*b\.mrcs has 24 px"):
        _dataset(_star(tmp_path, ["1@a.mrcs", "1@b.mrcs"]))


def test_a_missing_pixel_size_asks_for_pixel_size(tmp_path):
    from conftest import SHARED

    with pytest.raises(ValueError, match=r"rln_proj_64\.star: no pixel size .* header says 0 .*--pixel-size"):
        _dataset(SHARED / "particles" / "relion_project_70S" / "rln_proj_64.star", use_ctf=False)
    d = _dataset(SHARED / "particles" / "relion_project_70S" / "rln_proj_64.star", use_ctf=False, pixel_size=5.0)
    assert d.pixel_size == 5.0


def test_missing_ctf_columns_are_named_and_no_ctf_is_offered(tmp_path):
    t = read_star(META / "aspire_sample_incomplete_ctf_params.star", require_stacks=False)
    assert t.ctf is None and t.ctf_missing == ["rlnVoltage"]
    write_mrc(tmp_path / "s.mrcs", np.zeros((1, 16, 16), np.float32), 2.0)
    text = (META / "aspire_sample_incomplete_ctf_params.star").read_text()
    p = tmp_path / "p.star"
    p.write_text(text.replace(text[text.index("@", text.index("loop_")) + 1:].split()[0], "s.mrcs"))
    with pytest.raises(ValueError, match=r"p\.star: CTF fields missing \(rlnVoltage\).*--no-ctf"):
        _dataset(p)
    assert len(_dataset(p, use_ctf=False)) == 1


def test_image_names_without_an_index_are_refused(tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.zeros((1, 16, 16), np.float32), 2.0)
    with pytest.raises(ValueError, match=r"p\.star: rlnImageName 's\.mrcs' \(row 1\) is not of the form index@stack"):
        read_star(_star(tmp_path, ["s.mrcs"]))


def test_a_particle_table_subset_keeps_rows_aligned():
    t = read_star(META / "relion5.star", require_stacks=False)
    sub = t.subset(np.array([3, 0]))
    assert isinstance(sub, ParticleTable) and len(sub) == 2
    np.testing.assert_array_equal(sub.rotations[1], t.rotations[0])
    assert sub.ctf["rlnDefocusU"][0] == t.ctf["rlnDefocusU"][3]


def test_each_optics_group_keeps_its_own_pixel_size_beam_tilt_and_aberrations(tmp_path):
    src = META / "relion31.6opticsgroups.star"
    out = write_star(tmp_path / "o.star", read_star(src, require_stacks=False))
    a = starfile.read(src, always_dict=True)["optics"].set_index("rlnOpticsGroup").sort_index()
    b = starfile.read(out, always_dict=True)["optics"].set_index("rlnOpticsGroup").sort_index()
    np.testing.assert_allclose(b["rlnImagePixelSize"], a["rlnImagePixelSize"])  # 1.24 and 1.25 Å kept
    np.testing.assert_allclose(b["rlnBeamTiltX"], a["rlnBeamTiltX"], atol=1e-6)
    assert list(b["rlnOddZernike"]) == list(a["rlnOddZernike"]) and list(b["rlnOpticsGroupName"]) == list(
        a["rlnOpticsGroupName"])
    parts_a, parts_b = (starfile.read(p, always_dict=True)["particles"] for p in (src, out))
    np.testing.assert_array_equal(parts_a["rlnOpticsGroup"], parts_b["rlnOpticsGroup"])


def test_an_incomplete_ctf_is_carried_through_as_it_was(tmp_path):
    t = read_star(META / "aspire_sample_incomplete_ctf_params.star", require_stacks=False)
    out = write_star(tmp_path / "o.star", t, box=200)
    p = starfile.read(out, always_dict=True)["particles"]
    src = starfile.read(META / "aspire_sample_incomplete_ctf_params.star")
    np.testing.assert_allclose(p["rlnDefocusU"], src["rlnDefocusU"], atol=1e-4)


def test_cryosparc_fields_and_multi_column_extras_stay_out_of_a_star(tmp_path):
    t = read_star(META / "relion5.star", require_stacks=False)
    t.extra["location/micrograph_shape"] = np.zeros((len(t), 2), np.uint32)
    t.extra["location/micrograph_path"] = np.array([b"J1/mic.mrc"] * len(t))
    t.extra["rlnMicrographName"] = np.array([b"mic with space.mrc"] * len(t))
    out = write_star(tmp_path / "o.star", t)
    p = starfile.read(out, always_dict=True)["particles"]
    assert not any("/" in c for c in p.columns)
    assert set(p["rlnMicrographName"]) == {"mic with space.mrc"}


def test_a_key_value_optics_block_and_one_without_a_group_number_read(tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.zeros((2, 16, 16), np.float32), 1.0)
    (tmp_path / "kv.star").write_text(
        "data_optics\n\n_rlnVoltage 300\n_rlnSphericalAberration 2.7\n_rlnAmplitudeContrast 0.1\n"
        "_rlnImagePixelSize 2.5\n_rlnImageSize 16\n\ndata_particles\n\nloop_\n_rlnImageName\n_rlnDefocusU\n"
        "_rlnDefocusV\n_rlnDefocusAngle\n1@s.mrcs 10000 9000 0\n2@s.mrcs 12000 11000 0\n")
    t = read_star(tmp_path / "kv.star")
    assert t.pixel_size == 2.5 and t.ctf["rlnVoltage"].tolist() == [300, 300] and t.box == 16


def test_a_value_that_is_not_a_number_is_named_with_its_column(tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.zeros((1, 16, 16), np.float32), 2.0)
    p = _star(tmp_path, ["1@s.mrcs"])
    p.write_text(p.read_text().replace("1@s.mrcs 10000", "1@s.mrcs abc"))
    with pytest.raises(ValueError, match=r"p\.star: column rlnDefocusU holds a value that is not a number"):
        read_star(p)
