"""cryoSPARC .cs files: conventions pinned against cryoDRGN's conversions of a real file, round trips, bad input."""

import shutil

import numpy as np
import pytest
import starfile
import torch
from scipy.spatial.transform import Rotation

from conftest import DATA
from napari_semiamort.data.cryodrgn import ctf_to_cryodrgn, load_pickle_safely, poses_to_cryodrgn
from napari_semiamort.data.cryosparc import read_cs, write_cs
from napari_semiamort.physics.so3 import geodesic_distance, random_rotations

P12 = DATA / "cryosparc_P12_J24_001_particles.cs"
EMPIAR = DATA / "empiar_10076_7.cs"


@pytest.fixture
def p12_datadir(tmp_path):
    """Empty stand-ins for the 50 stacks P12_J24 names (only their existence is checked when reading)."""
    for name in set(np.load(P12)["blob/path"].astype(str)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    return tmp_path


def save_cs(path, fields: dict) -> None:
    """A .cs file from column arrays (as cryoSPARC writes it: np.save of a structured array)."""
    n = len(next(iter(fields.values())))
    out = np.zeros(n, dtype=[(k, v.dtype, v.shape[1:]) for k, v in fields.items()])
    for k, v in fields.items():
        out[k] = v
    with open(path, "wb") as fh:
        np.save(fh, out)


def empiar_fields(names=None) -> dict:
    data = np.load(EMPIAR)
    return {k: data[k] for k in (names or data.dtype.names)}


def test_p12_j24_cs_gives_the_same_ctf_and_poses_as_cryodrgns_parse_ctf_and_parse_pose(p12_datadir):
    table = read_cs(P12, datadir=p12_datadir)
    assert len(table) == 2019 and table.pixel_size == 2.95 and table.box == 180 and len(table.stacks) == 50
    ctf = ctf_to_cryodrgn(table.ctf, 180, table.pixel_size)
    np.testing.assert_array_equal(ctf, load_pickle_safely(DATA / "ctf2_from_P12_J24.pkl"))
    rot, trans = poses_to_cryodrgn(table.rotations, table.origins, 180, table.pixel_size)
    golden_rot, golden_trans = load_pickle_safely(DATA / "pose_from_P12_J24.cs.pkl")
    assert np.abs(rot - golden_rot).max() < 1e-6  # measured 4.2e-7: float32 rounding
    assert np.abs(trans - golden_trans).max() < 1e-7  # measured 0


def test_cryosparc_pose_is_the_transposed_axis_angle_rotation_and_shift_is_the_origin_in_pixels(p12_datadir):
    """The formulas, against scipy (independent of our exponential map): A = exp([ω]×)ᵀ, origin = shift · psize."""
    data = np.load(P12)
    table = read_cs(P12, datadir=p12_datadir)
    expected = Rotation.from_rotvec(data["alignments3D/pose"].astype(np.float64)).as_matrix().transpose(0, 2, 1)
    assert np.abs(table.rotations - expected).max() < 1e-12
    np.testing.assert_allclose(table.origins, data["alignments3D/shift"].astype(np.float64) * 2.95, atol=1e-12)


def test_p12_j24_stacks_are_in_order_of_first_appearance_and_indices_are_zero_based(p12_datadir):
    data = np.load(P12)
    table = read_cs(P12, datadir=p12_datadir)
    names = data["blob/path"].astype(str)
    assert table.stacks[0] == p12_datadir / names[0]
    assert all(table.stacks[table.stack_index[i]] == p12_datadir / names[i] for i in range(0, 2019, 97))
    np.testing.assert_array_equal(table.image_index, data["blob/idx"])
    np.testing.assert_array_equal(table.uid, data["uid"])


def test_empiar10076_cs_finds_its_stack_beside_it_and_agrees_with_its_star_file():
    table = read_cs(EMPIAR)
    assert table.stacks == [DATA / "empiar_10076_7.mrc"]
    np.testing.assert_array_equal(table.image_index, np.arange(7))
    assert table.pixel_size == pytest.approx(1.31, abs=1e-5)  # 5 µm / 38168: the file says 1.3099979
    assert table.box == 320 and table.rotations is None and table.origins is None
    assert table.ctf_missing == []
    star = starfile.read(DATA / "empiar_10076_7.star")
    for name in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration"):
        np.testing.assert_allclose(table.ctf[name], star[name].to_numpy(float), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(table.ctf["rlnAmplitudeContrast"], star["rlnAmplitudeContrast"], rtol=1e-6)
    np.testing.assert_array_equal(table.ctf["rlnPhaseShift"], 0.0)
    np.testing.assert_array_equal(table.ctf["rlnCtfBfactor"], 0.0)
    assert set(table.extra) >= {"ctf/bfactor", "ctf/scale", "blob/sign"}


def test_write_cs_then_read_cs_gives_back_poses_ctf_stacks_and_uids(tmp_path, generator):
    table = read_cs(EMPIAR)
    rotations = random_rotations(7, generator, dtype=torch.float64).numpy()
    rotations[0] = np.diag([1.0, -1.0, -1.0])  # a half turn: the axis-angle log must not lose it
    rotations[1] = Rotation.from_rotvec([0.0, 0.0, np.pi - 1e-7]).as_matrix()
    rotations[2] = np.eye(3)
    origins = (torch.rand(7, 2, generator=generator, dtype=torch.float64).numpy() - 0.5) * 40.0  # Å
    out = write_cs(tmp_path / "out.cs", table, rotations=rotations, origins=origins)
    assert out == tmp_path / "out.cs" and sorted(p.name for p in tmp_path.iterdir()) == ["out.cs"]
    back = read_cs(out, passthrough=False)
    rot_err = geodesic_distance(torch.from_numpy(back.rotations), torch.from_numpy(rotations))
    assert rot_err.max() < 1e-6 and np.abs(back.rotations - rotations).max() < 1e-6
    assert np.abs(back.origins - origins).max() < 1e-4
    assert [p.resolve() for p in back.stacks] == [p.resolve() for p in table.stacks]
    np.testing.assert_array_equal(back.image_index, table.image_index)
    np.testing.assert_array_equal(back.uid, table.uid)
    assert back.pixel_size == table.pixel_size and back.box == table.box
    for name, value in table.ctf.items():
        np.testing.assert_allclose(back.ctf[name], value, rtol=1e-6, atol=1e-6, err_msg=name)
    for name, value in table.extra.items():
        np.testing.assert_array_equal(back.extra[name], value, err_msg=name)


def test_written_cs_is_a_plain_structured_array_with_cryosparcs_fields(tmp_path):
    table = read_cs(EMPIAR)
    write_cs(tmp_path / "with.cs", table, rotations=np.tile(np.eye(3), (7, 1, 1)))
    data = np.load(tmp_path / "with.cs", allow_pickle=False)
    assert data.shape == (7,)
    for name, kind, shape in [
        ("uid", "u", ()),
        ("blob/path", "S", ()),
        ("blob/idx", "u", ()),
        ("blob/shape", "u", (2,)),
        ("blob/psize_A", "f", ()),
        ("ctf/df1_A", "f", ()),
        ("ctf/df_angle_rad", "f", ()),
        ("alignments3D/pose", "f", (3,)),
        ("alignments3D/shift", "f", (2,)),
        ("alignments3D/psize_A", "f", ()),
    ]:
        assert data.dtype[name].base.kind == kind and data.dtype[name].shape == shape, name
    np.testing.assert_array_equal(data["alignments3D/shift"], 0.0)  # no origins: no shift
    np.testing.assert_array_equal(data["blob/shape"], 320)

    write_cs(tmp_path / "without.cs", table)  # the table has no poses: no alignments
    assert not any(n.startswith("alignments") for n in np.load(tmp_path / "without.cs").dtype.names)


def test_write_cs_gives_reproducible_unique_uids_when_the_table_has_none(tmp_path):
    table = read_cs(EMPIAR)
    table.uid = None
    write_cs(tmp_path / "a.cs", table)
    write_cs(tmp_path / "b.cs", table)
    uid = np.load(tmp_path / "a.cs")["uid"]
    assert len(np.unique(uid)) == 7
    np.testing.assert_array_equal(uid, np.load(tmp_path / "b.cs")["uid"])


def test_write_cs_refuses_to_overwrite_without_force(tmp_path):
    table = read_cs(EMPIAR)
    (tmp_path / "out.cs").write_text("keep me")
    with pytest.raises(FileExistsError, match="out.cs"):
        write_cs(tmp_path / "out.cs", table)
    assert (tmp_path / "out.cs").read_text() == "keep me"
    write_cs(tmp_path / "out.cs", table, force=True)
    assert len(read_cs(tmp_path / "out.cs")) == 7


def test_write_cs_refuses_poses_of_the_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match=r"rotations have shape \(6, 3, 3\)"):
        write_cs(tmp_path / "out.cs", read_cs(EMPIAR), rotations=np.zeros((6, 3, 3)))


def test_missing_project_relative_stacks_give_file_not_found_listing_them():
    with pytest.raises(FileNotFoundError) as info:
        read_cs(DATA / "cryosparc_J2_particles_exported.cs")
    msg = str(info.value)
    assert msg.startswith(str(DATA / "cryosparc_J2_particles_exported.cs"))
    assert "1 of 1 particle stacks not found" in msg
    assert "J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs" in msg and ">" not in msg
    assert "--datadir" in msg
    table = read_cs(DATA / "cryosparc_J2_particles_exported.cs", require_stacks=False)  # metadata only
    assert table.stacks == [DATA / "J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs"]
    assert len(table) == 22 and table.ctf is not None


def test_project_relative_stacks_resolve_against_the_project_folder(tmp_path):
    project = tmp_path / "CS-project"
    (project / "J2").mkdir(parents=True)
    shutil.copy(DATA / "cryosparc_J2_particles_exported.cs", project / "J2" / "particles.cs")
    stack = project / "J1" / "imported" / "000090334788266266069_18jam15b_0345_ali_DW.mrcs"
    stack.parent.mkdir(parents=True)
    stack.touch()
    table = read_cs(project / "J2" / "particles.cs")
    assert table.stacks == [stack] and len(table) == 22
    assert table.pixel_size == pytest.approx(1.345) and table.box == 300
    assert table.rotations is None  # 2D alignments only
    np.testing.assert_allclose(table.ctf["rlnVoltage"], 300.0)


def test_zero_row_cs_is_refused_as_having_no_particles():
    with pytest.raises(ValueError, match=r"cryosparc_tools_4k_dataset_empty\.cs: no particles"):
        read_cs(DATA / "cryosparc_tools_4k_dataset_empty.cs")


def test_files_that_are_not_structured_arrays_are_refused(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros((4, 3)))
    (tmp_path / "plain.npy").rename(tmp_path / "plain.cs")
    with pytest.raises(ValueError, match=r"plain\.cs: not a cryoSPARC \.cs file .*structured array"):
        read_cs(tmp_path / "plain.cs")
    (tmp_path / "text.cs").write_text("uid blob/path\n1 a.mrc\n")
    with pytest.raises(ValueError, match=r"text\.cs: not a cryoSPARC \.cs file"):
        read_cs(tmp_path / "text.cs")
    with pytest.raises(FileNotFoundError, match="absent.cs"):
        read_cs(tmp_path / "absent.cs")


def test_a_cs_without_blob_path_is_refused_naming_the_field(tmp_path):
    fields = empiar_fields()
    del fields["blob/path"]
    save_cs(tmp_path / "nopath.cs", fields)
    with pytest.raises(ValueError, match=r"nopath\.cs: no blob/path field"):
        read_cs(tmp_path / "nopath.cs")
    fields = empiar_fields()
    del fields["blob/idx"]
    save_cs(tmp_path / "noidx.cs", fields)
    with pytest.raises(ValueError, match=r"noidx\.cs: no blob/idx field"):
        read_cs(tmp_path / "noidx.cs")


def test_particles_with_different_pixel_sizes_are_refused_listing_them(tmp_path):
    fields = empiar_fields()
    fields["blob/psize_A"] = np.array([1.31] * 6 + [1.0], dtype=np.float32)
    save_cs(tmp_path / "mixed.cs", fields)
    with pytest.raises(ValueError, match=r"mixed\.cs: particles have 2 different pixel sizes .*1\.0, 1\.31"):
        read_cs(tmp_path / "mixed.cs", datadir=DATA)


def test_missing_ctf_fields_leave_no_ctf_and_name_the_relion_fields(tmp_path):
    fields = empiar_fields(["uid", "blob/path", "blob/idx", "blob/shape", "blob/psize_A", "ctf/df1_A", "ctf/cs_mm"])
    save_cs(tmp_path / "noctf.cs", fields)
    table = read_cs(tmp_path / "noctf.cs", datadir=DATA)
    assert table.ctf is None
    assert table.ctf_missing == ["rlnDefocusV", "rlnDefocusAngle", "rlnVoltage"]


def passthrough_pair(folder, main_name="cryosparc_P3_J7_002_particles.cs", pt_name="P3_J7_passthrough_particles.cs"):
    """The EMPIAR file split as cryoSPARC splits a job's output: blob/* in the main file, the rest passed through
    (rows shuffled, one extra particle), matched by uid."""
    data = empiar_fields()
    blob = [k for k in data if k == "uid" or k.startswith("blob/")]
    save_cs(folder / main_name, {k: data[k] for k in blob})
    rest = {k: v for k, v in data.items() if k not in blob or k == "uid"}
    order = np.array([3, 6, 0, 5, 1, 4, 2])
    rest = {k: v[order] for k, v in rest.items()}
    rest = {k: np.concatenate([v, v[:1]]) for k, v in rest.items()}
    rest["uid"][-1] = 12345  # a particle the main file dropped
    rest["location/center_x_frac"] = np.linspace(0.1, 0.7, 8, dtype=np.float32)
    save_cs(folder / pt_name, rest)
    return folder / main_name, folder / pt_name


def test_passthrough_next_to_the_cs_fills_in_the_missing_fields_by_uid(tmp_path):
    main, _ = passthrough_pair(tmp_path)
    table = read_cs(main, datadir=DATA)
    reference = read_cs(EMPIAR)
    assert table.ctf_missing == []
    for name, value in reference.ctf.items():
        np.testing.assert_array_equal(table.ctf[name], value, err_msg=name)
    expected_x = np.linspace(0.1, 0.7, 8, dtype=np.float32)[np.argsort([3, 6, 0, 5, 1, 4, 2])]
    np.testing.assert_array_equal(table.extra["location/center_x_frac"], expected_x)
    assert read_cs(main, passthrough=False, datadir=DATA).ctf is None


def test_an_explicit_passthrough_file_is_merged_and_two_candidates_are_not_guessed(tmp_path):
    main, pt = passthrough_pair(tmp_path)
    shutil.copy(pt, tmp_path / "J7_passthrough_particles_old.cs")
    assert read_cs(main, datadir=DATA).ctf is None  # two candidates: none is merged
    assert read_cs(main, passthrough=pt, datadir=DATA).ctf is not None


def test_passthrough_with_unmatched_uids_is_refused(tmp_path):
    main, pt = passthrough_pair(tmp_path)
    data = np.load(pt)
    cols = {k: data[k].copy() for k in data.dtype.names}
    cols["uid"][0] = 99  # the main file's particle is gone
    save_cs(pt, cols)
    with pytest.raises(ValueError, match=r"1 of 7 particle uids .* are not in the passthrough file"):
        read_cs(main, datadir=DATA)
