"""The table of malformed and degenerate inputs in docs/data.md, with the message each gets from the real code.

  python docs/make_input_table.py            (rewrites the table between its markers in docs/data.md)
  python docs/make_input_table.py --print    (prints it)

Each case writes a small bad input into a temporary folder and reads it the way ``semiamort reconstruct`` does
(:func:`read_particles`, :class:`ParticleDataset` and its scan; the options through
``ReconstructionConfig.validate``). The message is the error's (the temporary folder taken out of its paths) or,
where particles are skipped, the warning the log shows. tests/test_validation.py checks that the table in
docs/data.md is the one this script makes.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

DOC = Path(__file__).parent / "data.md"
BEGIN, END = "<!-- input table: docs/make_input_table.py -->", "<!-- end of input table -->"
COLUMNS = ("rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
           "rlnAmplitudeContrast", "rlnImagePixelSize")
GOOD = ("15000", "14000", "30", "300", "2.7", "0.1", "2.0")


def _stack(folder: Path, n: int = 6, box: int = 16, name: str = "s.mrcs", images=None) -> Path:
    from napari_semiamort.data.mrc import write_mrc

    images = np.random.default_rng(0).normal(size=(n, box, box)) if images is None else images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile's header statistics of NaN
        return write_mrc(folder / name, images, 2.0)


def _star(folder: Path, cells: dict[tuple[int, str], str] | None = None, n: int = 6, head: str = "",
          columns=COLUMNS) -> Path:
    """A RELION 3.0 particle STAR over ``s.mrcs`` (written too) with ``cells`` ``(row, column) → text`` replaced
    (row 0: every row)."""
    _stack(folder)
    rows = []
    for r in range(1, n + 1):
        values = dict(zip(COLUMNS, (f"{r}@s.mrcs", *GOOD), strict=True))
        values.update({c: v for (row, c), v in (cells or {}).items() if row in (0, r)})
        rows.append(" ".join(values[c] for c in columns))
    path = folder / "p.star"
    path.write_text(head + "data_particles\n\nloop_\n" + "".join(f"_{c}\n" for c in columns) + "\n".join(rows) + "\n")
    return path


def _header_field(path: Path, offset: int, value: int) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 4] = np.int32(value).tobytes()
    path.write_bytes(bytes(raw))
    return path


def _read(path: Path, use_ctf: bool = True, **kw) -> None:
    from napari_semiamort.data.dataset import ParticleDataset
    from napari_semiamort.data.readers import read_particles

    options = {k: kw.pop(k) for k in ("ctf_pkl", "pixel_size") if k in kw}
    ParticleDataset(read_particles(path, **options), use_ctf=use_ctf, **kw).scan()


def _option(**values) -> Callable[[Path], None]:
    from napari_semiamort.run.config import ReconstructionConfig

    return lambda tmp: ReconstructionConfig(particles="p.star", **values).validate()


def _stack_cases() -> list[tuple[str, Callable[[Path], None]]]:
    def loop(t):
        os.symlink(t / "b.mrcs", t / "a.mrcs")
        os.symlink(t / "a.mrcs", t / "b.mrcs")
        _read(t / "a.mrcs")

    def corrupt_gz(t):
        packed = bytearray(gzip.compress(_stack(t).read_bytes()))
        packed[200:260] = bytes(60)
        (t / "s.mrcs.gz").write_bytes(bytes(packed))
        _read(t / "s.mrcs.gz", use_ctf=False)

    def truncated_gz(t):
        (t / "s.mrcs.gz").write_bytes(gzip.compress(_stack(t).read_bytes())[:900])
        _read(t / "s.mrcs.gz", use_ctf=False)

    def truncated(t):
        p = _stack(t)
        p.write_bytes(p.read_bytes()[: 1024 + 3 * 16 * 16 * 4 + 100])
        _read(p, use_ctf=False)

    def bytes_(t, size):
        (t / "s.mrcs").write_bytes(b"not an MRC file " * size)
        _read(t / "s.mrcs", use_ctf=False)

    return [
        ("a particle file that does not exist", lambda t: _read(t / "p.star")),
        ("a loop of symbolic links", loop),
        ("a folder given as the particle file", lambda t: _read(t)),
        ("a file that is not MRC", lambda t: bytes_(t, 100)),
        ("a file shorter than an MRC header", lambda t: bytes_(t, 20)),
        ("an MRC header claiming 10⁹ images (bare stack)", lambda t: _read(_header_field(_stack(t), 8, 10**9))),
        ("a stack truncated after 3 of its 6 images (bare stack)", truncated),
        ("a negative size in the MRC header", lambda t: _read(_header_field(_stack(t), 0, -16))),
        ("MRC mode 4 (complex numbers)", lambda t: _read(_header_field(_stack(t), 12, 4))),
        ("MRC mode 5 (no such mode)", lambda t: _read(_header_field(_stack(t), 12, 5))),
        ("an extended header larger than the file", lambda t: _read(_header_field(_stack(t), 92, 10**9))),
        ("non-square images", lambda t: _read(_header_field(_stack(t, n=4), 4, 8))),
        ("a damaged .gz stack", corrupt_gz),
        ("a .gz stack cut short", truncated_gz),
        ("a stack header with pixel size −8.75 Å, no metadata",
         lambda t: _read(_header_field(_stack(t), 40, np.float32(-8.75 * 16).view(np.int32)), use_ctf=False)),
        ("a stack header with pixel size 1 Å (the 'unset' value), no metadata",
         lambda t: _read(_header_field(_stack(t), 40, np.float32(16.0).view(np.int32)), use_ctf=False)),
    ]


def _star_cases() -> list[tuple[str, Callable[[Path], None]]]:
    def raw(t, text: bytes):
        _stack(t)
        (t / "p.star").write_bytes(text)
        _read(t / "p.star")

    def non_utf8(t):
        text = _star(t).read_bytes()
        raw(t, text.replace(b"2@s.mrcs", b"2@s\xff.mrcs"))

    def ragged(t):
        raw(t, _star(t).read_bytes().replace(b"0.1 2.0\n3@", b"0.1 2.0 7\n3@"))

    return [
        ("bytes that are not UTF-8", non_utf8),
        ("a column given twice", lambda t: _read(_star(t, columns=(*COLUMNS, "rlnDefocusU")))),
        ("an empty data block", lambda t: _read(_star(t, head="data_optics\n\n"))),
        ("a particle table without rows", lambda t: _read(_star(t, n=0))),
        ("no rlnImageName column", lambda t: _read(_star(t, columns=COLUMNS[1:]))),
        ("a row with a value too many", ragged),
        ("a value that is not a number", lambda t: _read(_star(t, {(3, "rlnDefocusU"): "15O00"}))),
        ("a missing CTF column", lambda t: _read(_star(t, columns=COLUMNS[:4] + COLUMNS[5:]))),
        ("stacks that do not exist", lambda t: raw(t, _star(t).read_bytes().replace(b"@s.mrcs", b"@gone.mrcs"))),
        ("an image index past the end of its stack", lambda t: _read(_star(t, {(6, "rlnImageName"): "9@s.mrcs"}))),
        ("an rlnImageSize that disagrees with the stack",
         lambda t: _read(_star(t, {(0, "rlnImageSize"): "32"}, columns=(*COLUMNS, "rlnImageSize")))),
        ("an optics table without rows", lambda t: _read(_star(t, head="data_optics\n\nloop_\n_rlnOpticsGroup\n\n"))),
        ("pixel size 0", lambda t: _read(_star(t, {(0, "rlnImagePixelSize"): "0"}))),
        ("pixel size NaN", lambda t: _read(_star(t, {(0, "rlnImagePixelSize"): "nan"}))),
        ("pixel size in nm (0.085)", lambda t: _read(_star(t, {(0, "rlnImagePixelSize"): "0.085"}))),
        ("pixel size 500 Å", lambda t: _read(_star(t, {(0, "rlnImagePixelSize"): "500"}))),
    ]


def _ctf_and_image_cases() -> list[tuple[str, Callable[[Path], None]]]:
    def images(t, spoil: Callable[[np.ndarray], None]):
        x = np.random.default_rng(1).normal(size=(6, 16, 16))
        spoil(x)
        _stack(t, images=x)
        _read(t / "s.mrcs", use_ctf=False)

    def ctf_pkl(t, row):
        _stack(t)
        (t / "ctf.pkl").write_bytes(pickle.dumps(np.tile(np.array(row, np.float32), (6, 1))))
        _read(t / "s.mrcs", ctf_pkl=t / "ctf.pkl")

    def hostile(t):
        _stack(t)
        (t / "ctf.pkl").write_bytes(b"cos\nsystem\n(S'touch ran'\ntR.")
        _read(t / "s.mrcs", ctf_pkl=t / "ctf.pkl")

    def object_cs(t):
        with open(t / "J1_particles.cs", "wb") as fh:
            np.save(fh, np.array([{"blob/path": "s.mrcs"}], dtype=object), allow_pickle=True)
        _read(t / "J1_particles.cs")

    def spoil(rows, value):
        def f(x):
            x[rows, 3, 5] = value
        return f

    def constant(rows):
        def f(x):
            x[rows] = 4.0
        return f

    return [
        ("voltage 0 kV", lambda t: _read(_star(t, {(0, "rlnVoltage"): "0"}))),
        ("amplitude contrast 1.5", lambda t: _read(_star(t, {(0, "rlnAmplitudeContrast"): "1.5"}))),
        ("Cs NaN in one row", lambda t: _read(_star(t, {(2, "rlnSphericalAberration"): "nan"}))),
        ("defocus in µm (1.5 for 15,000 Å)",
         lambda t: _read(_star(t, {(0, "rlnDefocusU"): "1.5", (0, "rlnDefocusV"): "1.4"}))),
        ("NaN defocus in one row of six", lambda t: _read(_star(t, {(4, "rlnDefocusU"): "nan"}))),
        ("negative defocus in one row", lambda t: _read(_star(t, {(2, "rlnDefocusV"): "-12000"}))),
        ("defocus 1.2 (µm) in one row", lambda t: _read(_star(t, {(5, "rlnDefocusU"): "1.2"}))),
        ("Inf defocus in four rows of six",
         lambda t: _read(_star(t, {(r, "rlnDefocusU"): "inf" for r in range(1, 5)}))),
        ("an image holding NaN", lambda t: images(t, spoil([1], np.nan))),
        ("an image holding Inf", lambda t: images(t, spoil([4], np.inf))),
        ("an image holding 1e30", lambda t: images(t, spoil([2], 1e30))),
        ("a constant image", lambda t: images(t, constant([0]))),
        ("every image but one constant", lambda t: images(t, constant([0, 1, 2, 3, 4]))),
        ("a single particle", lambda t: _read(_stack(t, n=1), use_ctf=False)),
        ("--box larger than the images", lambda t: _read(_stack(t), use_ctf=False, box=64)),
        ("a ctf.pkl with pixel size −8.75 Å", lambda t: ctf_pkl(t, [16, -8.75, 15000, 14000, 0, 300, 2.7, 0.1, 0])),
        ("a ctf.pkl with voltage 0", lambda t: ctf_pkl(t, [16, 2.0, 15000, 14000, 0, 0, 2.7, 0.1, 0])),
        ("a pickle that would run a command", hostile),
        ("a .cs holding Python objects", object_cs),
    ]


def _option_cases() -> list[tuple[str, Callable[[Path], None]]]:
    nan, inf = float("nan"), float("inf")
    return [
        ("--pose-lr nan", _option(pose_lr=nan)),
        ("--volume-lr inf", _option(volume_lr=inf)),
        ("--encoder-lr 0", _option(encoder_lr=0.0)),
        ("--epochs 0", _option(epochs=0)),
        ("--max-shift -1", _option(max_shift=-1.0)),
        ("--threads -1", _option(threads=-1)),
        ("--pixel-size -8.75", _option(pixel_size=-8.75)),
        ("--mask-diameter nan", _option(mask_diameter=nan)),
    ]


def cases() -> list[tuple[str, Callable[[Path], None]]]:
    return _stack_cases() + _star_cases() + _ctf_and_image_cases() + _option_cases()


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def outcome(case: Callable[[Path], None]) -> tuple[str, str]:
    """``(what happens, the message)`` of one case, the temporary folder taken out of the message."""
    log = logging.getLogger("napari_semiamort")
    caught = _Warnings()
    log.addHandler(caught)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            case(Path(tmp))
            what = "skipped, listed in the log" if caught.messages else "read"
            message = " / ".join(m for m in caught.messages if "skipped" in m) or "-"
        except (ValueError, FileNotFoundError) as exc:
            kind = "FileNotFoundError" if isinstance(exc, FileNotFoundError) else "ValueError"
            what, message = f"refused ({kind})", str(exc)
        finally:
            log.removeHandler(caught)
        root = str(Path(tmp).resolve())
    return what, message.replace(root + "/", "").replace(tmp + "/", "").replace(root, ".").replace(tmp, ".")


def table() -> str:
    rows = ["| input | outcome | message |", "|---|---|---|"]
    for kind, case in cases():
        what, message = outcome(case)
        rows.append(f"| {kind} | {what} | `{message.replace('|', '/')}` |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--print", action="store_true", help="print the table instead of writing it into data.md")
    args = p.parse_args()
    text = table()
    if args.print:
        print(text)
        return
    doc = DOC.read_text()
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
