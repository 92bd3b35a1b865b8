"""Malformed and degenerate inputs, generated (hypothesis, derandomized): every one ends in a one-line error of
ours that names the file, or in particles skipped and listed, never in another exception, a hang or a large
allocation. Issue 20."""

import gzip
import logging
import os
import pickle
import tempfile
import tracemalloc
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_semiamort.data.cryodrgn import load_pickle_safely, read_ctf_pkl
from napari_semiamort.data.dataset import ParticleDataset
from napari_semiamort.data.mrc import read_map, write_mrc
from napari_semiamort.data.readers import read_particles

FUZZ = settings(derandomize=True, max_examples=120, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow])
OURS = (ValueError, FileNotFoundError)
MEMORY_LIMIT = 64e6  # bytes numpy may allocate for a file of a few kB (a header claiming 10⁹ images must not)


def _expect_clear(read, *paths: Path):
    """Run ``read``; what it raises must be ours, one line, naming one of ``paths``. Returns the error or None."""
    tracemalloc.start()
    try:
        read()
        error = None
    except OURS as exc:
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"{peak / 1e6:.0f} MB allocated"
    if error is not None:
        text = str(error)
        assert "\n" not in text, text
        assert any(p.name in text for p in paths), text
    return error


def _read_stack_for_a_run(path: Path):
    return ParticleDataset(read_particles(path), use_ctf=False, pixel_size=2.0).scan()


# ---------------------------------------------------------------- MRC headers
_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


def _valid_header() -> np.ndarray:
    """The header `(1,)` of a valid stack of three 8 × 8 float32 images at 2 Å/px."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_mrc(Path(tmp) / "h.mrcs", np.zeros((3, 8, 8), np.float32), 2.0)
        return np.frombuffer(path.read_bytes()[:1024], dtype=mrcfile.dtypes.HEADER_DTYPE).copy()


def _write_quietly(path: Path, images: np.ndarray) -> Path:
    """A stack of ``images`` at 2 Å/px; mrcfile's header statistics of NaN or 1e30 warn (not ours)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return write_mrc(path, images, 2.0)


@st.composite
def mrc_bytes(draw) -> tuple[bytes, bool]:
    """An MRC file's bytes: a stack of 8 × 8 images whose header (mode, sizes, extended header, MAP tag) may lie
    about its data, and whose data may be cut short; and whether it is gzip'd."""
    mode = draw(st.sampled_from([0, 1, 2, 6, 12, 3, 4, 5, 101, -1, 2**31 - 1]))
    nx = draw(st.sampled_from([8, 8, 8, 7, 0, -8, 2**31 - 1]))
    ny = draw(st.sampled_from([nx, nx, 8, -1]))
    nz = draw(st.sampled_from([3, 3, 1, 0, -3, 10**9, 2**31 - 1]))
    nsymbt = draw(st.sampled_from([0, 0, 0, 80, -80, 10**9]))
    images = draw(st.integers(0, 4))
    cut = draw(st.sampled_from([0, 0, 0, 1, 7, 100, 1000]))
    header = _valid_header()
    header["mode"], header["nx"], header["ny"], header["nz"], header["nsymbt"] = mode, nx, ny, nz, nsymbt
    header["mx"], header["my"], header["mz"] = max(nx, 0) % 2**31, max(ny, 0) % 2**31, max(nz, 0) % 2**31
    if not draw(st.booleans()):
        header["map"] = b"    "
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    extended = bytes(rng.integers(0, 256, size=min(max(nsymbt, 0), 80), dtype=np.uint8))
    itemsize = np.dtype(_DTYPES.get(mode, np.float32)).itemsize
    data = rng.integers(0, 256, size=images * 64 * itemsize, dtype=np.uint8).tobytes()
    raw = header.tobytes() + extended + data
    return raw[: len(raw) - cut] if cut else raw, draw(st.booleans())


@FUZZ
@given(mrc_bytes())
def test_any_mrc_header_or_truncation_reads_or_fails_with_a_clear_error(case):
    raw, gz = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("fuzz.mrcs.gz" if gz else "fuzz.mrcs")
        path.write_bytes(gzip.compress(raw) if gz else raw)
        _expect_clear(lambda: _read_stack_for_a_run(path), path)
        _expect_clear(lambda: read_map(path), path)


def test_a_header_claiming_a_billion_images_fails_at_once_without_allocating(tmp_path):
    path = write_mrc(tmp_path / "s.mrcs", np.ones((3, 8, 8), np.float32), 2.0)
    raw = bytearray(path.read_bytes())
    raw[8:12] = np.int32(10**9).tobytes()  # nz
    path.write_bytes(bytes(raw))
    error = _expect_clear(lambda: read_particles(path), path)
    assert "truncated" in str(error) and "1,000,000,000 images" in str(error)


@pytest.mark.parametrize("mode", [3, 4])
def test_complex_modes_are_refused(tmp_path, mode):
    path = write_mrc(tmp_path / "s.mrcs", np.ones((3, 8, 8), np.float32), 2.0)
    raw = bytearray(path.read_bytes())
    raw[12:16] = np.int32(mode).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"s\.mrcs: holds complex numbers \(MRC mode {mode}\)"):
        read_particles(path)


@pytest.mark.parametrize("mode", [0, 1, 2, 6, 12])
def test_every_real_mode_reads(tmp_path, mode):
    with mrcfile.new(tmp_path / "s.mrcs") as m:
        m.set_data((np.arange(3 * 64).reshape(3, 8, 8) % 50).astype(_DTYPES[mode]))
        m.set_image_stack()
        m.voxel_size = 2.0
    d = ParticleDataset(read_particles(tmp_path / "s.mrcs"), use_ctf=False).scan()
    assert len(d) == 3 and d.pixel_size == 2.0


def test_a_corrupt_gzip_stack_is_named(tmp_path):
    path = write_mrc(tmp_path / "s.mrcs", np.random.default_rng(1).normal(size=(4, 16, 16)), 2.0)
    packed = bytearray(gzip.compress(path.read_bytes()))
    packed[200:260] = bytes(60)
    (tmp_path / "s.mrcs.gz").write_bytes(bytes(packed))
    with pytest.raises(ValueError, match=r"s\.mrcs\.gz: not a readable gzip'd MRC stack"):
        read_particles(tmp_path / "s.mrcs.gz")


def test_a_symlink_loop_is_named(tmp_path):
    os.symlink(tmp_path / "b.mrcs", tmp_path / "a.mrcs")
    os.symlink(tmp_path / "a.mrcs", tmp_path / "b.mrcs")
    with pytest.raises(ValueError, match=r"a\.mrcs: a loop of symbolic links"):
        read_particles(tmp_path / "a.mrcs")
    os.symlink(tmp_path / "p.star", tmp_path / "p.star")
    with pytest.raises(ValueError, match=r"p\.star: a loop of symbolic links"):
        read_particles(tmp_path / "p.star")


# ---------------------------------------------------------------- STAR tables
_COLUMNS = ("rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
            "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize")
_REQUIRED = _COLUMNS[:6]  # without one of these there are no images or no CTF
_REFUSED = ("missing", "duplicate", "zero_pixel", "negative_pixel", "box", "non_utf8", "empty_block", "ragged",
            "voltage", "micrometres")
_MUTATIONS = _REFUSED + ("nan_defocus_row", "negative_defocus_row")


@st.composite
def star_texts(draw) -> tuple[bytes, set[str], int]:
    """A RELION 3.1 particle STAR over ``s.mrcs`` (6 images of 16 × 16 px) with some of :data:`_MUTATIONS`
    applied: ``(bytes, mutations, rows)``."""
    mutations = draw(st.sets(st.sampled_from(_MUTATIONS), max_size=3))
    n = draw(st.integers(2, 6))
    values = {"rlnDefocusU": ["15000"] * n, "rlnDefocusV": ["14000"] * n, "rlnDefocusAngle": ["30"] * n}
    optics = {"rlnVoltage": "300", "rlnSphericalAberration": "2.7", "rlnAmplitudeContrast": "0.1",
              "rlnImagePixelSize": "2.0", "rlnImageSize": "16"}
    row = draw(st.integers(0, n - 1))
    if "nan_defocus_row" in mutations:
        values["rlnDefocusU"][row] = draw(st.sampled_from(["nan", "inf", "-inf", "NaN"]))
    if "negative_defocus_row" in mutations:
        values["rlnDefocusV"][row] = "-12000"
    if "micrometres" in mutations:
        values["rlnDefocusU"] = values["rlnDefocusV"] = ["1.5"] * n
    optics["rlnImagePixelSize"] = "0" if "zero_pixel" in mutations else optics["rlnImagePixelSize"]
    optics["rlnImagePixelSize"] = "-8.75" if "negative_pixel" in mutations else optics["rlnImagePixelSize"]
    optics["rlnImageSize"] = "32" if "box" in mutations else optics["rlnImageSize"]
    optics["rlnVoltage"] = draw(st.sampled_from(["0", "nan", "3000"])) if "voltage" in mutations else "300"
    particle_cols = ["rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"]
    optics_cols = list(optics)
    if "missing" in mutations:
        gone = draw(st.sampled_from(_REQUIRED))
        particle_cols = [c for c in particle_cols if c != gone]
        optics_cols = [c for c in optics_cols if c != gone]
    if "duplicate" in mutations:
        particle_cols.insert(draw(st.integers(0, len(particle_cols))), draw(st.sampled_from(particle_cols)))
    cell = {"rlnImageName": [f"{i + 1}@s.mrcs" for i in range(n)], "rlnOpticsGroup": ["1"] * n, **values}
    lines = ["# version 30001", "", "data_optics", "", "loop_", "_rlnOpticsGroup"]
    lines += [f"_{c}" for c in optics_cols] + [" ".join(["1"] + [optics[c] for c in optics_cols]), ""]
    if "empty_block" in mutations:
        lines += ["data_general", ""]
    lines += ["data_particles", "", "loop_"] + [f"_{c} #{i + 1}" for i, c in enumerate(particle_cols)]
    lines += [" ".join(cell[c][i] for c in particle_cols) for i in range(n)]
    if "ragged" in mutations:
        lines[-1 - draw(st.integers(0, n - 1))] += " 7"
    text = ("\n".join(lines) + "\n").encode()
    if "non_utf8" in mutations:
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + b"\xff\xfe" + text[at:]
    return text, mutations, n


@pytest.fixture(scope="module")
def stack_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_star")
    write_mrc(folder / "s.mrcs", np.random.default_rng(2).normal(size=(6, 16, 16)).astype(np.float32), 2.0)
    return folder


@FUZZ
@given(star_texts())
def test_any_malformed_star_is_refused_clearly_or_its_bad_rows_skipped(stack_folder, case):
    text, mutations, n = case
    with tempfile.TemporaryDirectory(dir=stack_folder) as tmp:
        star = Path(tmp) / "fuzz.star"
        star.write_bytes(text)
        result = {}

        def run():
            result["data"] = ParticleDataset(read_particles(star, datadir=stack_folder)).scan()

        error = _expect_clear(run, star, stack_folder / "s.mrcs")
    if mutations & set(_REFUSED):
        assert error is not None, f"{sorted(mutations)} accepted"
        return
    if error is not None:  # two bad rows of two or three: too few left, or most rows bad
        assert "at least 2" in str(error) or "rows" in str(error), str(error)
        return
    data = result["data"]
    bad = {"nan_defocus_row", "negative_defocus_row"} & mutations
    assert len(data) == n - len(data.skipped) and (len(data.skipped) == 1) == bool(bad)
    assert np.isfinite(data.ctf.defocus_u_in_angstroms.numpy()).all()
    assert (data.ctf.defocus_v_in_angstroms.numpy() >= 1000).all()


def test_defocus_in_micrometres_is_named(stack_folder, tmp_path):
    rows = "".join(f"{i}@{stack_folder / 's.mrcs'} 1.5 1.4 0 300 2.7 0.1 2.0\n" for i in range(1, 7))
    star = tmp_path / "um.star"
    star.write_text("data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n"
                    "_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n_rlnImagePixelSize\n" + rows)
    with pytest.raises(ValueError, match=r"um\.star: rlnDefocusU is 1\.5 Å in rows 1, 2, .* look like µm"):
        ParticleDataset(read_particles(star))


# ---------------------------------------------------------------- degenerate images
_KINDS = {"ok": None, "nan": np.nan, "inf": np.inf, "constant": 3.0, "huge": 1e30}
_REASON = {"nan": "NaN or Inf", "inf": "NaN or Inf", "constant": "constant", "huge": "beyond"}


@FUZZ
@given(st.lists(st.sampled_from(list(_KINDS)), min_size=1, max_size=7))
def test_unusable_images_are_skipped_and_listed_or_the_set_is_refused(stack_folder, kinds):
    rng = np.random.default_rng(len(kinds))
    images = rng.normal(size=(len(kinds), 16, 16)).astype(np.float32)
    for i, kind in enumerate(kinds):
        if kind == "constant":
            images[i] = 3.0
        elif kind != "ok":
            images[i, 5, 7] = _KINDS[kind]
    with tempfile.TemporaryDirectory(dir=stack_folder) as tmp:
        path = Path(tmp) / "degenerate.mrcs"
        _write_quietly(path, images)
        result = {}

        def run():
            result["data"] = ParticleDataset(read_particles(path), use_ctf=False).scan()

        error = _expect_clear(run, path)
    usable = [i for i, k in enumerate(kinds) if k == "ok"]
    if len(usable) < 2:
        assert error is not None and "a reconstruction needs at least 2" in str(error)
        return
    data = result["data"]
    assert list(data.rows) == usable
    for i, kind in enumerate(kinds):
        if kind != "ok":
            assert _REASON[kind] in data.skip_reasons[i]


def test_the_skipped_images_are_listed_in_the_log_by_reason(stack_folder, tmp_path, caplog):
    images = np.random.default_rng(4).normal(size=(6, 16, 16)).astype(np.float32)
    images[1] = 0.0
    images[4, 0, 0] = 1e30
    _write_quietly(tmp_path / "s.mrcs", images)
    with caplog.at_level(logging.WARNING, logger="napari_semiamort"):
        d = ParticleDataset(read_particles(tmp_path / "s.mrcs"), use_ctf=False).scan()
    assert list(d.skipped) == [1, 4]
    assert "skipped 1 particle(s) whose images are constant (zero variance) (row 2)" in caplog.text
    assert "skipped 1 particle(s) whose images hold values beyond ±1e+15 (row 5)" in caplog.text


def test_a_single_particle_and_a_box_larger_than_the_images_are_refused(tmp_path):
    write_mrc(tmp_path / "one.mrcs", np.random.default_rng(5).normal(size=(1, 16, 16)).astype(np.float32), 2.0)
    with pytest.raises(ValueError, match=r"one\.mrcs: 1 particle\(s\): a reconstruction needs at least 2"):
        ParticleDataset(read_particles(tmp_path / "one.mrcs"), use_ctf=False).scan()
    write_mrc(tmp_path / "two.mrcs", np.random.default_rng(5).normal(size=(2, 16, 16)).astype(np.float32), 2.0)
    with pytest.raises(ValueError, match=r"two\.mrcs: box 64: .* 16 px \(64 px is larger than the images\)"):
        ParticleDataset(read_particles(tmp_path / "two.mrcs"), use_ctf=False, box=64)


# ---------------------------------------------------------------- hostile files run no code
class _Payload:
    """Unpickled, it would create the file ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_hostile_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "ctf.pkl").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ValueError, match=r"ctf\.pkl: refused to load: the pickle asks for pathlib"):
        read_ctf_pkl(tmp_path / "ctf.pkl")
    obj = np.array([_Payload(str(marker))], dtype=object)  # an object array inside an allowed ndarray
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError, match=r"obj\.pkl: refused to load"):
        load_pickle_safely(tmp_path / "obj.pkl")
    assert not marker.exists()


def test_a_hostile_npy_with_an_object_array_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    with open(tmp_path / "J1_particles.cs", "wb") as fh:
        np.save(fh, np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"J1_particles\.cs: not a cryoSPARC \.cs file"):
        read_particles(tmp_path / "J1_particles.cs")
    assert not marker.exists()
