"""cryoDRGN ctf.pkl / pose.pkl: conventions pinned against cryoDRGN's own conversions, round trips, refusals."""

import gzip
import pickle
import pickletools

import numpy as np
import pytest
import starfile
import torch

from conftest import DATA
from napari_semiamort.data.cryodrgn import (
    ctf_to_cryodrgn,
    load_pickle_safely,
    poses_to_cryodrgn,
    read_cryodrgn,
    read_ctf_pkl,
    read_pose_pkl,
    write_ctf_pkl,
    write_pose_pkl,
)
from napari_semiamort.data.cryosparc import read_cs
from napari_semiamort.physics.so3 import euler_relion_to_matrix, random_rotations

STACK = DATA / "empiar_10076_7.mrc"


def globals_named(path) -> set[str]:
    """The module.name globals a pickle file asks for (protocols 0–3 write them as GLOBAL text)."""
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(path.read_bytes()) if op.name == "GLOBAL"}


def test_pfcrt_star_gives_the_same_ctf_and_poses_as_cryodrgns_parse_star():
    """cryoDRGN's rot is RELION's A itself and trans = rlnOriginX/Y (px) / D (parse_pose_star -D 300)."""
    star = starfile.read(DATA / "FinalRefinement-OriginalParticles-PfCRT.star")
    angles = torch.deg2rad(torch.tensor(star[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)))
    rotations = euler_relion_to_matrix(*angles.unbind(-1)).numpy()
    pixel_size = 1.035  # rlnDetectorPixelSize 1.035 µm at magnification 10,000
    origins = star[["rlnOriginX", "rlnOriginY"]].to_numpy(float) * pixel_size  # RELION 3.0: pixels
    rot, trans = poses_to_cryodrgn(rotations, origins, 300, pixel_size)
    golden_rot, golden_trans = load_pickle_safely(DATA / "pose_from_PfCRT.star.pkl")
    assert np.abs(rot - golden_rot).max() < 1e-7  # measured 2.8e-8 (float32 output)
    assert np.abs(trans - golden_trans).max() < 1e-9
    assert np.abs(rotations - golden_rot).max() < 1e-12  # float64: A exactly
    assert np.abs(rotations.transpose(0, 2, 1) - golden_rot).max() > 0.1  # ...and not its transpose

    ctf = {name: star[name].to_numpy(float) for name in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")}
    ctf |= {name: star[name].to_numpy(float) for name in ("rlnVoltage", "rlnSphericalAberration", "rlnPhaseShift")}
    ctf["rlnAmplitudeContrast"] = np.full(5, 0.1)  # -w 0.1: the STAR has no amplitude contrast
    golden_ctf = load_pickle_safely(DATA / "ctf1_from_PfCRT_star.pkl")
    np.testing.assert_array_equal(ctf_to_cryodrgn(ctf, 300, pixel_size), golden_ctf)


def test_cryodrgn_pose_pickle_reads_back_to_the_poses_of_the_cs_it_came_from(tmp_path):
    """pose_from_P12_J24.cs.pkl → RELION A and origins in Å equal those read from the .cs itself."""
    stacks = set(np.load(DATA / "cryosparc_P12_J24_001_particles.cs")["blob/path"].astype(str))
    for name in stacks:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    table = read_cs(DATA / "cryosparc_P12_J24_001_particles.cs", datadir=tmp_path)
    rotations, origins = read_pose_pkl(DATA / "pose_from_P12_J24.cs.pkl", 180, 2.95)
    assert rotations.dtype == np.float64 and rotations.shape == (2019, 3, 3)
    assert np.abs(rotations - table.rotations).max() < 1e-6
    assert np.abs(origins - table.origins).max() < 1e-4  # Å
    ctf, pixel_size, box = read_ctf_pkl(DATA / "ctf2_from_P12_J24.pkl")
    assert (pixel_size, box) == (2.95, 180)
    assert list(ctf) == list(table.ctf)
    for name, value in table.ctf.items():
        np.testing.assert_allclose(ctf[name], value, rtol=1e-6, atol=1e-5, err_msg=name)


def test_ctf_pickle_round_trips_exactly(tmp_path):
    golden = load_pickle_safely(DATA / "ctf2_from_P12_J24.pkl")
    ctf, pixel_size, box = read_ctf_pkl(DATA / "ctf2_from_P12_J24.pkl")
    out = write_ctf_pkl(tmp_path / "ctf.pkl", ctf, box, pixel_size)
    again = load_pickle_safely(out)
    assert again.dtype == np.float32
    np.testing.assert_array_equal(again, golden)


def test_pose_pickle_round_trips_to_float32_precision(tmp_path):
    golden_rot, golden_trans = load_pickle_safely(DATA / "pose_from_P12_J24.cs.pkl")
    rotations, origins = read_pose_pkl(DATA / "pose_from_P12_J24.cs.pkl", 180, 2.95)
    out = write_pose_pkl(tmp_path / "pose.pkl", rotations, origins, 180, 2.95)
    rot, trans = load_pickle_safely(out)
    assert rot.dtype == trans.dtype == np.float32
    np.testing.assert_array_equal(rot, golden_rot)
    assert np.abs(trans - golden_trans).max() < 1e-8


def test_written_pickles_name_numpy_core_so_numpy_1_and_2_both_read_them(tmp_path):
    """numpy 2 pickles name numpy._core, which numpy < 1.26 (common in cryoDRGN installs) cannot import."""
    ctf, pixel_size, box = read_ctf_pkl(DATA / "ctf2_from_P12_J24.pkl")
    write_ctf_pkl(tmp_path / "ctf.pkl", ctf, box, pixel_size)
    write_pose_pkl(tmp_path / "pose.pkl", np.tile(np.eye(3), (4, 1, 1)), None, 64, 1.0)
    for name in ("ctf.pkl", "pose.pkl"):
        assert globals_named(tmp_path / name) == {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
        with open(tmp_path / name, "rb") as fh:
            plain = pickle.load(fh)  # cryoDRGN reads them with plain pickle
        assert isinstance(plain, np.ndarray if name == "ctf.pkl" else tuple)


def test_pickles_written_by_numpy_2_with_any_protocol_load(tmp_path):
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros((2, 2)))
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(arrays, protocol=protocol))
        rot, trans = load_pickle_safely(path)
        np.testing.assert_array_equal(rot, arrays[0])
    path = tmp_path / "ind.pkl"  # cryoDRGN's filtered.ind.pkl: a list of ints (here numpy ints)
    path.write_bytes(pickle.dumps([np.int64(4), np.int64(1), 7]))
    assert load_pickle_safely(path) == [4, 1, 7]


def test_a_pickle_that_asks_for_os_getcwd_is_refused_naming_it(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"cos\ngetcwd\n)R.")  # protocol 0: call os.getcwd()
    with pytest.raises(ValueError) as info:
        load_pickle_safely(path)
    assert str(info.value) == (
        f"{path}: refused to load: the pickle asks for os.getcwd; only numpy arrays and tuples are accepted"
    )


class Payload:
    """Unpickling this would call ``_mark`` (its ``__reduce__``): the refusal must come first."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_mark, (self.marker,))


def _mark(marker):
    with open(marker, "w") as fh:
        fh.write("executed")


def test_a_pickled_object_is_refused_and_nothing_in_it_runs(tmp_path):
    marker = tmp_path / "executed.txt"
    path = tmp_path / "pose.pkl"
    path.write_bytes(pickle.dumps((np.eye(3)[None], Payload(marker))))
    with pytest.raises(ValueError, match=r"refused to load: the pickle asks for test_cryodrgn\._mark"):
        load_pickle_safely(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(Payload(marker), protocol=0))
    with pytest.raises(ValueError, match="refused to load"):
        load_pickle_safely(path)
    assert not marker.exists()


def test_pickles_of_dicts_object_arrays_or_garbage_are_refused(tmp_path):
    cases = {
        "dict.pkl": pickle.dumps({"rot": np.eye(3)}),
        "object.pkl": pickle.dumps(np.array([1, "a"], dtype=object)),
        "strings.pkl": pickle.dumps(["a", "b"]),
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=f"{name}: refused to load: the pickle holds"):
            load_pickle_safely(tmp_path / name)
    (tmp_path / "garbage.pkl").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(ValueError, match=r"garbage\.pkl: not a readable pickle"):
        load_pickle_safely(tmp_path / "garbage.pkl")
    with pytest.raises(FileNotFoundError, match="absent.pkl"):
        load_pickle_safely(tmp_path / "absent.pkl")


def test_a_ctf_pickle_of_the_wrong_shape_is_refused(tmp_path):
    path = tmp_path / "ctf.pkl"
    path.write_bytes(pickle.dumps(np.zeros((5, 8), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"ctf\.pkl: not a cryoDRGN CTF file: expected an \(N, 9\) array .*\(5, 8\)"):
        read_ctf_pkl(path)
    path.write_bytes(pickle.dumps((np.zeros((5, 9)),)))
    with pytest.raises(ValueError, match="got a tuple"):
        read_ctf_pkl(path)
    mixed = np.tile(np.array([180, 2.95, 1e4, 1e4, 0, 300, 2.7, 0.1, 0], dtype=np.float32), (3, 1))
    mixed[2, 1] = 1.5
    path.write_bytes(pickle.dumps(mixed))
    with pytest.raises(ValueError, match=r"2 different pixel sizes \(column Apix\) \(1\.5, 2\.95\)"):
        read_ctf_pkl(path)


def test_a_pose_pickle_of_the_wrong_shape_or_not_rotations_is_refused(tmp_path):
    path = tmp_path / "pose.pkl"
    path.write_bytes(pickle.dumps((np.tile(np.eye(3), (4, 1, 1)), np.zeros((3, 2)))))
    with pytest.raises(ValueError, match=r"translations have shape \(3, 2\); .* has \(4, 2\)"):
        read_pose_pkl(path, 64, 1.0)
    path.write_bytes(pickle.dumps((np.ones((4, 3, 3)), np.zeros((4, 2)))))
    with pytest.raises(ValueError, match="not rotation matrices"):
        read_pose_pkl(path, 64, 1.0)
    path.write_bytes(pickle.dumps(np.zeros((4, 9))))
    with pytest.raises(ValueError, match=r"rotations have shape \(4, 9\)"):
        read_pose_pkl(path, 64, 1.0)


def test_a_pose_pickle_with_rotations_only_reads_zero_origins(tmp_path, generator):
    rotations = random_rotations(5, generator, dtype=torch.float64).numpy()
    path = tmp_path / "pose.pkl"
    path.write_bytes(pickle.dumps(rotations))
    rot, origins = read_pose_pkl(path, 64, 1.0)
    np.testing.assert_array_equal(rot, rotations)
    np.testing.assert_array_equal(origins, np.zeros((5, 2)))


def test_write_refuses_to_overwrite_without_force(tmp_path):
    ctf, pixel_size, box = read_ctf_pkl(DATA / "ctf1_from_PfCRT_star.pkl")
    write_ctf_pkl(tmp_path / "ctf.pkl", ctf, box, pixel_size)
    with pytest.raises(FileExistsError, match="ctf.pkl"):
        write_ctf_pkl(tmp_path / "ctf.pkl", ctf, box, pixel_size)
    write_ctf_pkl(tmp_path / "ctf.pkl", ctf, box, pixel_size, force=True)


def test_read_cryodrgn_builds_a_table_for_a_stack_and_its_pickles(tmp_path, generator):
    reference = read_cs(DATA / "empiar_10076_7.cs")
    rotations = random_rotations(7, generator, dtype=torch.float64).numpy()
    origins = (torch.rand(7, 2, generator=generator, dtype=torch.float64).numpy() - 0.5) * 20.0
    write_ctf_pkl(tmp_path / "ctf.pkl", reference.ctf, 320, reference.pixel_size)
    write_pose_pkl(tmp_path / "pose.pkl", rotations, origins, 320, reference.pixel_size)
    table = read_cryodrgn(STACK, tmp_path / "ctf.pkl", tmp_path / "pose.pkl")
    assert table.stacks == [STACK] and table.box == 320 and len(table) == 7
    np.testing.assert_array_equal(table.image_index, np.arange(7))
    assert table.pixel_size == pytest.approx(1.31, abs=1e-5)
    assert np.abs(table.rotations - rotations).max() < 1e-6
    assert np.abs(table.origins - origins).max() < 1e-4
    for name, value in reference.ctf.items():
        np.testing.assert_allclose(table.ctf[name], value, rtol=1e-6, err_msg=name)

    bare = read_cryodrgn(STACK)  # no pickles: no CTF, no poses, no pixel size (the header has none)
    assert bare.ctf is None and bare.ctf_missing[:2] == ["rlnDefocusU", "rlnDefocusV"]
    assert bare.rotations is None and bare.pixel_size is None
    with pytest.raises(ValueError, match="pixel size is unknown"):
        read_cryodrgn(STACK, pose_pkl=tmp_path / "pose.pkl")
    assert len(read_cryodrgn(STACK, pose_pkl=tmp_path / "pose.pkl", pixel_size=1.31).rotations) == 7


def test_a_downsampled_stack_gets_cryodrgns_rescaled_pixel_size(tmp_path):
    """cryoDRGN keeps the original D and Apix in ctf.pkl; a stack of L pixels has D · Apix / L Å/px."""
    reference = read_cs(DATA / "empiar_10076_7.cs")
    write_ctf_pkl(tmp_path / "ctf.pkl", reference.ctf, 640, 0.655)
    assert read_cryodrgn(STACK, tmp_path / "ctf.pkl").pixel_size == pytest.approx(1.31)


def test_row_count_mismatch_between_stack_and_ctf_pickle_names_both_files(tmp_path):
    ctf, pixel_size, box = read_ctf_pkl(DATA / "ctf1_from_PfCRT_star.pkl")  # 5 rows, the stack has 7 images
    write_ctf_pkl(tmp_path / "ctf.pkl", ctf, 320, 1.31)
    with pytest.raises(ValueError) as info:
        read_cryodrgn(STACK, tmp_path / "ctf.pkl")
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'ctf.pkl'}: 5 particles") and f"{STACK} has 7 images" in msg
    write_pose_pkl(tmp_path / "pose.pkl", np.tile(np.eye(3), (6, 1, 1)), None, 320, 1.31)
    with pytest.raises(ValueError, match=r"pose\.pkl: 6 particles, but the stack .* has 7 images"):
        read_cryodrgn(STACK, pose_pkl=tmp_path / "pose.pkl", pixel_size=1.31)


def test_a_gzipped_stack_reads_like_the_plain_one(tmp_path):
    reference = read_cs(DATA / "empiar_10076_7.cs")
    write_ctf_pkl(tmp_path / "ctf.pkl", reference.ctf, 320, reference.pixel_size)
    gz = tmp_path / "empiar_10076_7.mrcs.gz"
    gz.write_bytes(gzip.compress(STACK.read_bytes(), compresslevel=1))
    table = read_cryodrgn(gz, tmp_path / "ctf.pkl")
    assert len(table) == 7 and table.box == 320 and table.stacks == [gz]
