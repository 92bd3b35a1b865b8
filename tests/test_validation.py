"""Bad input through the command line (issue 20): a NaN defocus, a NaN learning rate, constant images, … each ends
in a one-line error naming the problem, or in particles skipped and listed, never in a run that exits 0 with a map
of NaN or zeros. Tiny data (32 images of 16 px), one thread."""

import logging
import pickle
import shutil
import warnings

import mrcfile
import numpy as np
import pytest

from napari_semiamort.cli.main import main
from napari_semiamort.data.star import read_star_columns

MOLECULE = "1igy.cif.gz"
TINY = ["--epochs", "2", "--switch-epoch", "1", "--heads", "2", "--batch-size", "16", "--threads", "1",
        "--restarts", "1"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from importlib.resources import files

    out = tmp_path_factory.mktemp("sim")
    molecule = str(files("napari_semiamort") / "resources" / MOLECULE)
    assert main(["simulate", molecule, "-o", str(out), "--n", "32", "--box", "16", "--snr", "1", "--seed", "2"]) == 0
    return out


@pytest.fixture
def data(sim, tmp_path):
    """A copy of the simulated set to spoil: ``particles.star`` and ``particles.mrcs``."""
    for name in ("particles.star", "particles.mrcs"):
        shutil.copy(sim / name, tmp_path / name)
    return tmp_path


def _set_cells(star, column: str, values: dict[int, str]) -> None:
    """Replace ``column``'s value in the given rows (1-based) of the STAR's particle table (or optics table)."""
    lines = star.read_text().splitlines()
    columns, row = [], 0
    for i, line in enumerate(lines):
        words = line.split()
        if line.startswith("data_"):
            columns, row = [], 0
        elif line.startswith("_"):
            columns.append(words[0][1:])
        elif words and column in columns and not line.startswith(("loop_", "#")):
            row += 1
            if row in values:
                words[columns.index(column)] = values[row]
                lines[i] = " ".join(words)
    star.write_text("\n".join(lines) + "\n")


def _reconstruct(data, *options, run="run"):
    return main(["reconstruct", str(data / "particles.star"), "-o", str(data / run), *TINY, *options])


def _assert_a_real_map(run) -> None:
    with mrcfile.open(run / "map.mrc") as m:
        volume = np.asarray(m.data)
    assert np.isfinite(volume).all() and np.abs(volume).max() > 0


def _spoil_images(data, rows: list[int], value: float) -> None:
    with mrcfile.open(data / "particles.mrcs") as m:
        images = np.array(m.data)
    images[[r - 1 for r in rows]] = value
    with warnings.catch_warnings(), mrcfile.new(data / "particles.mrcs", overwrite=True) as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile's header statistics of NaN
        m.set_data(images)
        m.voxel_size = 17.5


def test_a_nan_defocus_row_is_skipped_and_listed_and_the_run_makes_a_real_map(data, caplog):
    _set_cells(data / "particles.star", "rlnDefocusU", {5: "nan"})
    with caplog.at_level(logging.WARNING, logger="napari_semiamort"):
        assert _reconstruct(data) == 0
    assert "skipped 1 particle(s) whose CTF values are unusable (row 5: rlnDefocusU nan Å)" in caplog.text
    _assert_a_real_map(data / "run")
    skipped = (data / "run" / "skipped.csv").read_text().splitlines()  # the list, in the run folder too
    assert skipped[0] == "input_row,reason" and len(skipped) == 2
    assert skipped[1].startswith("5,") and "nan" in skipped[1]
    assert len(read_star_columns(data / "run" / "poses.star")["rlnImageName"]) == 31


def test_nan_defocus_in_most_rows_is_refused_naming_the_file_and_rows(data, capsys):
    _set_cells(data / "particles.star", "rlnDefocusV", {r: "nan" for r in range(1, 20)})
    assert _reconstruct(data) == 1
    err = capsys.readouterr().err
    assert "particles.star: rlnDefocusV is nan Å in rows 1, 2, 3, 4, 5, … (19 in all) of 32" in err
    assert not (data / "run").exists()


def test_defocus_in_micrometres_is_refused_naming_the_unit(data, capsys):
    _set_cells(data / "particles.star", "rlnDefocusU", {r: "1.5" for r in range(1, 33)})
    assert _reconstruct(data) == 1
    assert "look like µm" in capsys.readouterr().err


@pytest.mark.parametrize(("column", "value", "message"), [
    ("rlnVoltage", "0", "rlnVoltage is 0 kV in rows 1, 2, 3, 4, 5, … (32 in all): the voltage must lie in 60–400 kV"),
    ("rlnAmplitudeContrast", "1.5", "rlnAmplitudeContrast is 1.5 in rows"),
    ("rlnImagePixelSize", "0", "rlnImagePixelSize: pixel size 0 Å is not a positive number"),
    ("rlnImageSize", "32", "the metadata says the images are 32 px, the stacks hold 16 px images"),
])
def test_a_bad_optics_value_is_refused_naming_the_file(data, capsys, column, value, message):
    _set_cells(data / "particles.star", column, {1: value})
    assert _reconstruct(data) == 1
    err = capsys.readouterr().err
    assert "particles.star: " in err and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--pose-lr", "nan", "pose_lr must be a finite number greater than 0, not nan"),
    ("--volume-lr", "inf", "volume_lr must be a finite number greater than 0, not inf"),
    ("--encoder-lr", "inf", "encoder_lr must be a finite number greater than 0, not inf"),
    ("--epochs", "0", "epochs must be at least 1, not 0"),
    ("--max-shift", "-1", "max_shift must lie in [0, 0.5]"),
    ("--threads", "-1", "threads must be 0 (auto) or more, not -1"),
    ("--pixel-size", "-8.75", "pixel_size must lie in 0.1–100 Å"),
    ("--mask-diameter", "nan", "mask_diameter must be a finite number, not nan"),
])
def test_a_bad_option_is_refused_before_anything_is_read_or_made(data, capsys, option, value, message):
    assert _reconstruct(data, option, value) == 1
    assert f"invalid configuration: {message}" in capsys.readouterr().err
    assert not (data / "run").exists()


def test_constant_images_are_skipped_and_listed_and_the_run_makes_a_real_map(data, caplog):
    _spoil_images(data, [3, 8], 0.0)
    with caplog.at_level(logging.WARNING, logger="napari_semiamort"):
        assert _reconstruct(data) == 0
    assert "skipped 2 particle(s) whose images are constant (zero variance) (rows 3, 8)" in caplog.text
    _assert_a_real_map(data / "run")
    rows = [line.split(",")[0] for line in (data / "run" / "skipped.csv").read_text().splitlines()[1:]]
    assert rows == ["3", "8"]
    assert len(read_star_columns(data / "run" / "poses.star")["rlnImageName"]) == 30


def test_a_set_of_constant_images_is_refused(data, capsys):
    _spoil_images(data, list(range(1, 32)), 5.0)
    assert _reconstruct(data) == 1
    err = capsys.readouterr().err
    assert "1 usable particle(s) of 32 (31 images are constant (zero variance))" in err
    assert "a reconstruction needs at least 2" in err


def test_a_box_larger_than_the_images_is_refused(data, capsys):
    assert _reconstruct(data, "--box", "64") == 1
    assert "particles.star: box 64: choose an even size from 8 to the images' 16 px (64 px is larger" in \
        capsys.readouterr().err


def test_a_negative_pixel_size_in_a_ctf_pickle_is_refused(data, capsys):
    ctf = np.tile(np.array([16, -8.75, 15000, 14000, 0, 300, 2.7, 0.1, 0], np.float32), (32, 1))
    (data / "ctf.pkl").write_bytes(pickle.dumps(ctf))
    args = ["reconstruct", str(data / "particles.mrcs"), "--ctf-pkl", str(data / "ctf.pkl"), "-o", str(data / "r")]
    assert main(args + TINY) == 1
    assert "ctf.pkl (column Apix): pixel size -8.75 Å is not a positive number" in capsys.readouterr().err


def test_the_table_of_bad_inputs_in_the_docs_is_what_the_code_says():
    """docs/data.md's table is made by docs/make_input_table.py from the readers themselves: run it again after a
    message changes."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "docs" / "make_input_table.py"
    spec = importlib.util.spec_from_file_location("make_input_table", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.table()
    assert len(table.splitlines()) - 2 >= 30
    assert f"{module.BEGIN}\n{table}\n{module.END}" in module.DOC.read_text(), "run python docs/make_input_table.py"
