"""The run folder (run/folder.py): one run at a time (its lock), --force only once the new input is read and never
onto the run's own inputs, and a folder or disk that cannot take the run's files refused or reported in one line,
leaving no file damaged under its final name."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_semiamort.cli.main import main
from napari_semiamort.data.atomic import atomic_path
from napari_semiamort.data.star import read_star_columns
from napari_semiamort.run.folder import LOCK, RunLock

N, BOX = 200, 32
QUICK = ["--epochs", "1", "--switch-epoch", "1", "--batch-size", "64", "--threads", "1"]
# a run in a child process; before the privileges go (root's chmod is no obstacle): what it will import
CHILD = """
import os, sys
import napari_semiamort.cli.main as cli, napari_semiamort.cli.reconstruct, napari_semiamort.run.folder
import napari_semiamort.run.loop, napari_semiamort.run.session, napari_semiamort.devices
if os.environ.get("AS_NOBODY"):
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
raise SystemExit(cli.main(sys.argv[1:]))
"""
# the same under a 3 MB limit on the size of any file it writes (a quota's equivalent: EFBIG beyond it)
LIMITED = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000))
""" + CHILD


@pytest.fixture(scope="module")
def sim(tmp_path_factory, ribosome_images):
    return ribosome_images(tmp_path_factory.mktemp("sim"), n_particles=N, box=BOX, snr=1.0, seed=3)


@pytest.fixture(scope="module")
def first_run(sim, tmp_path_factory):
    """A finished tiny run: the earlier run a new one meets in its folder."""
    run = tmp_path_factory.mktemp("first") / "run"
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(run), *QUICK]) == 0
    return run


@pytest.fixture
def earlier(first_run, tmp_path):
    """A copy of :func:`first_run` of this test's own."""
    return Path(shutil.copytree(first_run, tmp_path / "run"))


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def run_child(args: list[str], code: str = CHILD, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


# ---------------------------------------------------------------- one run per folder
def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_pid_the_host_and_since_when(sim, earlier, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom napari_semiamort.run.folder import RunLock\n"
         "RunLock(sys.argv[1], command='semiamort reconstruct (the first)').acquire()\nprint('held', flush=True)\n"
         "time.sleep(300)", str(earlier)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = files(earlier)
        new = ["reconstruct", str(sim / "particles.star"), "-o", str(earlier), *QUICK]
        for args in ([*new, "--force"], new, ["reconstruct", "--resume", str(earlier)]):
            assert main(args) == 1
            line = one_line(capsys.readouterr().err)
            assert f"PID {holder.pid} on {socket.gethostname()} since " in line and str(earlier) in line, line
            assert "(semiamort reconstruct (the first))" in line
            assert files(earlier) == before  # the running run's lock and files untouched
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_stale_lock_is_reported_in_one_line_and_taken_over(sim, earlier, caplog):
    killed = run_child([str(earlier)], "import os, sys\nfrom napari_semiamort.run.folder import RunLock\n"
                       "RunLock(sys.argv[1]).acquire()\nprint(os.getpid())\nos._exit(0)")  # as kill -9 leaves it
    pid = int(killed.stdout)
    assert json.loads((earlier / LOCK).read_text())["pid"] == pid
    with caplog.at_level("WARNING", logger="napari_semiamort"):
        assert main(["reconstruct", str(sim / "particles.star"), "-o", str(earlier), "--force", *QUICK]) == 0
    taken = [r.getMessage() for r in caplog.records if "lock" in r.getMessage()]
    assert len(taken) == 1 and f"taking over the lock of PID {pid} on {socket.gethostname()}" in taken[0], taken
    assert not (earlier / LOCK).exists()  # removed at the end of the run that took it


def test_a_lock_is_removed_when_its_process_exits_without_releasing_it(tmp_path):
    done = run_child([str(tmp_path)], "import sys\nfrom napari_semiamort.run.folder import RunLock\n"
                     "RunLock(sys.argv[1]).acquire()\nprint((RunLock(sys.argv[1]).path).exists())")
    assert done.returncode == 0 and done.stdout.strip() == "True"  # held while it ran
    assert not (tmp_path / LOCK).exists()  # the atexit backstop


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": 4242, "host": "node-elsewhere", "started": "2024-05-01T10:00:00"}))
    with pytest.raises(FileExistsError, match="node-elsewhere.*cannot be checked.*delete .*semiamort.lock"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK).read_text())["host"] == "node-elsewhere"


# ---------------------------------------------------------------- --force
@pytest.mark.parametrize("bad", [["nope.star"], ["particles.star", "--box", "64"]], ids=["missing-star", "bad-box"])
def test_force_with_a_bad_input_leaves_the_earlier_runs_files_intact(sim, earlier, bad, capsys):
    before = files(earlier)
    args = ["reconstruct", str(sim / bad[0]), *bad[1:], "-o", str(earlier), "--force", *QUICK]
    assert main(args) == 1
    line = one_line(capsys.readouterr().err)
    assert ("nope.star" in line) if bad[0] == "nope.star" else ("box 64" in line), line
    assert files(earlier) == before  # nothing removed, no lock left


def _stack_in_the_run_folder(sim: Path, run: Path, tmp_path: Path) -> list[str]:
    """A STAR elsewhere whose stack is ``run/half1.mrc`` (a name the run writes)."""
    shutil.copy(sim / "particles.mrcs", run / "half1.mrc")
    star = tmp_path / "elsewhere" / "particles.star"
    star.parent.mkdir()
    star.write_text((sim / "particles.star").read_text().replace("@particles.mrcs", f"@{run / 'half1.mrc'}"))
    return [str(star)]


@pytest.mark.parametrize("case", ["particles", "stack", "reference-map", "ctf-pkl"])
def test_force_never_deletes_the_runs_own_inputs(sim, earlier, tmp_path, case, capsys):
    if case == "ctf-pkl":
        assert main(["export", "cryodrgn", str(earlier)]) == 0  # ctf.pkl and pose.pkl in the run folder
    inputs = {"particles": [str(earlier / "poses.star")],  # `semiamort reconstruct run3/poses.star -o run3 --force`
              "stack": None,
              "reference-map": [str(sim / "particles.star"), "--reference-map", str(earlier / "map.mrc")],
              "ctf-pkl": [str(sim / "particles.mrcs"), "--ctf-pkl", str(earlier / "ctf.pkl")]}[case] \
        or _stack_in_the_run_folder(sim, earlier, tmp_path)
    capsys.readouterr()
    before = files(earlier)
    assert main(["reconstruct", *inputs, "-o", str(earlier), "--force", *QUICK]) == 1
    line = one_line(capsys.readouterr().err)
    assert "is in its run folder" in line and "under a name the run writes" in line, line
    assert files(earlier) == before


def test_too_little_free_space_is_refused_before_the_earlier_run_is_removed(sim, earlier, monkeypatch, capsys):
    from napari_semiamort.run import folder

    monkeypatch.setattr(folder.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    before = files(earlier)
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(earlier), "--force", *QUICK]) == 1
    line = one_line(capsys.readouterr().err)
    assert "the run needs about" in line and "MB free" in line, line
    assert files(earlier) == before


# ---------------------------------------------------------------- folders and disks that cannot take the run
def test_a_write_limit_ends_the_run_in_one_line_leaving_no_damaged_file(sim, tmp_path):
    """3 MB per file: the heads' checkpoint (8 MB at this size) cannot be written; the maps and poses can."""
    run = tmp_path / "run"
    done = run_child(["reconstruct", str(sim / "particles.star"), "-o", str(run), *QUICK, "--stage1", "heads",
                      "--heads", "4"], LIMITED)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert f"{run / 'checkpoint.pt'}: the file would exceed the file size limit" in line, line
    assert "no checkpoint was written yet" in line
    names = {p.name for p in run.iterdir()}
    assert "map.mrc" in names and not [n for n in names if n.endswith(".tmp") or n == LOCK], names
    for path in run.iterdir():  # every file under a final name is whole
        if path.suffix == ".mrc":
            with mrcfile.open(path) as m:  # strict: a short file does not open
                assert m.data.shape == (BOX,) * 3 and np.isfinite(m.data).all()
        elif path.suffix == ".star":
            assert len(read_star_columns(path)["rlnAngleRot"]) == N
        elif path.suffix == ".jsonl":
            assert all(isinstance(json.loads(x), dict) for x in path.read_text().splitlines())
        elif path.suffix == ".json":
            assert "config" in json.loads(path.read_text())
        elif path.name == "checkpoint.pt":
            from napari_semiamort.run.checkpoint import load_checkpoint

            load_checkpoint(run)


def test_a_read_only_run_folder_is_refused_in_one_line_before_the_data_are_read(tmp_path):
    root = Path(tempfile.mkdtemp())  # a path the unprivileged user can reach (pytest's folders are root's alone)
    try:
        root.chmod(0o755)
        run = root / "run"
        run.mkdir(mode=0o555)
        run.chmod(0o555)
        as_nobody = os.geteuid() == 0  # root writes anywhere: the child drops to nobody, or the test cannot run
        if not as_nobody and os.access(run, os.W_OK):
            pytest.skip("chmod 0o555 does not make a folder read-only here")
        done = run_child(["reconstruct", str(tmp_path / "never-read.star"), "-o", str(run), *QUICK],
                         **({"AS_NOBODY": "1"} if as_nobody else {}))
        if as_nobody and "Operation not permitted" in done.stderr and "setgroups" in done.stderr:
            pytest.skip("running as root without the right to become another user: chmod cannot be tested")
        assert done.returncode == 1
        line = one_line(done.stderr)
        assert f"{run}: cannot write in this folder (permission denied)" in line, line
        assert list(run.iterdir()) == []
    finally:
        for p in (root, root / "run"):
            if p.exists():
                p.chmod(0o755)
        shutil.rmtree(root)


@pytest.mark.parametrize("where", ["file", "below-a-file"])
def test_o_naming_a_file_is_refused_in_one_line(sim, tmp_path, where, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("the user's notes")
    out = target if where == "file" else target / "run"
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(out), *QUICK]) == 1
    line = one_line(capsys.readouterr().err)
    assert str(out) in line and ("is a file, not a folder" in line or "a part of its path is a file" in line), line
    assert target.read_text() == "the user's notes"


def test_atomic_path_names_the_final_file_of_a_write_that_found_no_room_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(OSError) as caught, atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        try:  # as torch.save into an open file reports it: a RuntimeError raised while handling the OSError
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("unexpected pos 704 vs 598")  # noqa: B904 - as torch raises it
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_finds_the_reason_of_a_write_whose_writer_dropped_it(tmp_path):
    """torch.save given a path reports a write beyond the size limit as a RuntimeError without the errno."""
    code = LIMITED.split("import os, sys")[0] + (
        "import sys, torch\nfrom napari_semiamort.data.atomic import atomic_path\n"
        "try:\n    with atomic_path(sys.argv[1]) as tmp:\n        torch.save(torch.zeros(1_000_000), tmp)\n"
        "except OSError as exc:\n    print(exc.errno, exc.filename)\n")
    done = run_child([str(tmp_path / "big.pt")], code)
    assert done.stdout.split() == [str(errno.EFBIG), str(tmp_path / "big.pt")], done.stderr
    assert list(tmp_path.iterdir()) == []
