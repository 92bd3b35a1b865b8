"""The CPU threads a run gets: the cores this process may really use (affinity, cgroup quota), the load
other processes put on them, and idle OpenMP threads that sleep instead of spinning (issue 19)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_semiamort import devices


def _fake_machine(root: Path, files: dict[str, str], cgroup: str = "0::/\n") -> Path:
    """A filesystem root holding ``proc/self/cgroup`` and the given files under ``sys/fs/cgroup``."""
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "cgroup").write_text(cgroup)
    (root / "sys" / "fs" / "cgroup").mkdir(parents=True)
    for name, text in files.items():
        path = root / "sys" / "fs" / "cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def eight_cores(monkeypatch):
    """An affinity of 8 CPUs on a 16-CPU machine."""
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 16)


@pytest.mark.parametrize(("cpu_max", "cores"), [("150000 100000\n", 2), ("200000 100000", 2), ("50000 100000", 1),
                                                ("max 100000\n", 8), ("garbled", 8), ("1 2 3", 8), ("", 8)])
def test_a_cgroup_v2_quota_caps_the_cores_rounded_up_and_max_or_garbage_is_no_quota(tmp_path, eight_cores,
                                                                                    cpu_max, cores):
    root = _fake_machine(tmp_path, {"cpu.max": cpu_max})
    assert devices.available_cores(root) == cores


def test_without_cgroup_files_the_cores_are_the_affinity(tmp_path, eight_cores):
    assert devices.cgroup_cpu_limit(tmp_path) is None
    assert devices.available_cores(tmp_path) == 8


def test_an_affinity_smaller_than_the_quota_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert devices.available_cores(_fake_machine(tmp_path, {"cpu.max": "400000 100000"})) == 1


def test_the_quota_of_the_process_s_own_cgroup_or_a_parent_s_counts_whichever_is_smaller(tmp_path, eight_cores):
    root = _fake_machine(tmp_path, {"user.slice/cpu.max": "300000 100000", "user.slice/job/cpu.max": "max 100000",
                                    "other/cpu.max": "100000 100000"}, cgroup="0::/user.slice/job\n")
    assert devices.cgroup_cpu_limit(root) == pytest.approx(3.0)
    assert devices.available_cores(root) == 3


def test_a_cgroup_v1_cfs_quota_caps_the_cores_and_minus_one_is_no_quota(tmp_path, eight_cores):
    v1 = "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n"
    root = _fake_machine(tmp_path / "a", {"cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
                                          "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, cgroup=v1)
    assert devices.available_cores(root) == 3  # the container's own quota, at the mount's root
    unlimited = _fake_machine(tmp_path / "b", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert devices.cgroup_cpu_limit(unlimited) is None


def test_an_unreadable_cgroup_file_is_ignored(tmp_path, eight_cores):
    root = _fake_machine(tmp_path, {})
    (root / "sys" / "fs" / "cgroup" / "cpu.max").mkdir()  # a folder where a file should be: reading fails
    assert devices.available_cores(root) == 8


@pytest.mark.parametrize("load", [0.0, 0.4, 3.0, 7.6, 16.0, 200.0])
@pytest.mark.parametrize("reserve", [0, 1, 8, 50])
def test_auto_threads_stays_within_one_and_the_available_cores(tmp_path, eight_cores, monkeypatch, load, reserve):
    monkeypatch.setattr(devices.os, "getloadavg", lambda: (load, load, load))
    for cpu_max in ("max 100000", "300000 100000"):
        root = _fake_machine(tmp_path / cpu_max.split()[0], {"cpu.max": cpu_max})
        threads = devices.auto_threads(reserve, root)
        assert 1 <= threads <= devices.available_cores(root)


def test_auto_threads_takes_the_cores_the_load_leaves_free(tmp_path, eight_cores, monkeypatch):
    root = _fake_machine(tmp_path, {})
    for load, threads in [(0.0, 8), (2.0, 7), (8.0, 4), (16.0, 1), (40.0, 1)]:  # 8 of 16 CPUs: half the load
        monkeypatch.setattr(devices.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert devices.auto_threads(0, root) == threads
        assert devices.auto_threads(1, root) == max(1, threads - 1)


def test_without_a_load_average_auto_threads_is_every_available_core(tmp_path, eight_cores, monkeypatch):
    def no_load():
        raise OSError("no load average here")

    monkeypatch.setattr(devices.os, "getloadavg", no_load)
    assert devices.auto_threads(0, _fake_machine(tmp_path, {"cpu.max": "500000 100000"})) == 5


def test_set_cpu_threads_without_a_number_leaves_the_user_s_omp_num_threads_to_torch(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(devices, "auto_threads", lambda: pytest.fail("auto_threads called despite OMP_NUM_THREADS"))
    devices.set_cpu_threads(None)
    assert torch.get_num_threads() == before


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter whose environment has no OpenMP wait settings but ``env``'s."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out


def test_importing_the_package_makes_idle_openmp_threads_sleep_before_torch_loads():
    code = ("import os, sys; assert 'OMP_WAIT_POLICY' not in os.environ; import napari_semiamort; "
            "assert 'torch' not in sys.modules; print(os.environ['OMP_WAIT_POLICY'])")
    assert _python(code).stdout.strip() == "PASSIVE"


@pytest.mark.parametrize(("user", "expected"), [({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
                                                ({"GOMP_SPINCOUNT": "10000"}, "unset")])
def test_a_user_s_own_openmp_wait_setting_wins(user, expected):
    code = "import os, napari_semiamort; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    assert _python(code, **user).stdout.strip() == expected


def _spin_count(stderr: str) -> int:
    """The spin count GNU libgomp reports as it starts (OMP_DISPLAY_ENV=VERBOSE)."""
    for line in stderr.splitlines():
        if line.strip().startswith("GOMP_SPINCOUNT"):
            return int(line.split("=")[1].strip().strip("'"))
    pytest.skip("torch's OpenMP runtime is not GNU libgomp here: it reports no GOMP_SPINCOUNT")


def test_the_cli_s_openmp_runtime_starts_with_no_spinning_unless_the_user_asks():
    """The runtime's own report, through the CLI's entry point (``reconstruct --help`` loads torch)."""
    code = "from napari_semiamort.cli.main import main; main(['reconstruct', '--help'])"
    code = f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\nassert 'torch' in sys.modules"
    assert _spin_count(_python(code, OMP_DISPLAY_ENV="VERBOSE").stderr) == 0
    assert _spin_count(_python(code, OMP_DISPLAY_ENV="VERBOSE", OMP_WAIT_POLICY="ACTIVE").stderr) > 0
