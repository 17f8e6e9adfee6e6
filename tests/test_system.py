"""What differs between systems (plumbing/system.py), each branch run here: Linux's for real, macOS's and
Windows' with the platform named (their system calls are Linux's, or a stand-in for psutil's reading where
Linux has no such field)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT

from plumbing import system


def test_usable_cores_are_those_the_process_may_run_on():
    assert system.usable_cores() == len(os.sched_getaffinity(0))
    one_core = subprocess.run(["taskset", "-c", "0", sys.executable, "-c",
                               "from plumbing.system import usable_cores; print(usable_cores())"],
                              cwd=ROOT, capture_output=True, text=True, check=True)
    assert one_core.stdout.strip() == "1"  # a limit the process was started with, not the machine's cores


def test_peak_memory_in_mib_on_each_system(monkeypatch):
    linux = system.peak_memory_mib("linux")
    assert psutil.Process().memory_info().rss / 2**20 <= linux * 1.01  # a peak is at least what is held now
    assert system.peak_memory_mib("darwin") == pytest.approx(linux / 1024, rel=0.01)  # macOS's field counts bytes

    class Reading:  # psutil's Windows reading: the peak working set, in bytes (Linux has no such field)
        peak_wset = 300 * 2**20

    monkeypatch.setattr(psutil.Process, "memory_info", lambda self: Reading())
    assert system.peak_memory_mib("win32") == 300.0


def test_flushing_a_folder_opens_it_except_on_windows(tmp_path):
    system.flush_folder(tmp_path, "linux")
    system.flush_folder(tmp_path, "darwin")
    with pytest.raises(FileNotFoundError):  # Linux and macOS open the folder itself
        system.flush_folder(tmp_path / "missing", "linux")
    system.flush_folder(tmp_path / "missing", "win32")  # Windows cannot: the folder is never opened


def test_only_linux_children_end_with_their_parent():
    assert callable(system.ending_with_parent("linux")["preexec_fn"])
    assert system.ending_with_parent("darwin") == system.ending_with_parent("win32") == {}  # subprocess's defaults


@pytest.mark.slow
def test_a_linux_child_gets_sigterm_when_its_parent_dies(tmp_path):
    """A parent starts a sleeping child with ending_with_parent() and is killed: the child ends too."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys
from pathlib import Path
from plumbing.system import ending_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], **ending_with_parent())
Path({str(pid_file)!r}).write_text(str(child.pid))
child.wait()
"""], cwd=ROOT)
    while not pid_file.exists() or not pid_file.read_text():
        assert parent.poll() is None
    child = psutil.Process(int(pid_file.read_text()))
    parent.kill()
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and ended(child) is False:
        time.sleep(0.05)
    assert ended(child)


def ended(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # ended, not yet reaped by whoever adopted it
    except psutil.NoSuchProcess:
        return True


def test_only_a_linux_without_a_display_server_has_no_screen():
    assert not system.has_display({}, "linux") and system.has_display({"DISPLAY": ":0"}, "linux")
    assert all(system.has_display({name: "x"}, "linux") for name in ("WAYLAND_DISPLAY", "SDL_VIDEODRIVER"))
    assert system.has_display({}, "darwin") and system.has_display({}, "win32")


def test_the_tests_self_stop_says_what_to_do_on_windows(capsys):
    with pytest.raises(SystemExit) as e:
        system.stop_self("win32")
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "unset it" in err and "\n" not in err


def test_nothing_else_in_the_project_asks_the_system_which_it_is():
    """Every place that differs by system goes through plumbing/system.py."""
    differs = ("import resource", "sys.platform", "os.name", "preexec_fn", "sched_getaffinity", "SIGSTOP",
               "ru_maxrss", "O_RDONLY", "prctl")
    files = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts
             and p != ROOT / "plumbing" / "system.py"]
    assert len(files) > 20
    found = {f"{p.relative_to(ROOT)}: {word}" for p in files for word in differs if word in Path(p).read_text()}
    assert found == set()
