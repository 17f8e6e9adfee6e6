"""Watching: see.py's random agent recorded without TensorFlow, and see.py and run.py --view in
a real window on a real X server (Xvfb), checked with screenshots taken by xwd while the episodes
play (no SDL_VIDEODRIVER=dummy there).

The window tests need Debian's xvfb and x11-apps (`.ci/run` installs them). Without them they are
skipped, except under CI=true, where that is a failure.
"""

import os
import re
import shutil
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import ROOT, imported_modules, run_main, script

MISSING = [tool for tool in ("Xvfb", "xwd") if shutil.which(tool) is None]
if MISSING and os.environ.get("CI") == "true":
    raise RuntimeError(f"{' and '.join(MISSING)} not found: CI must test the window on a real X server "
                       "(apt-get install xvfb x11-apps)")
needs_x = pytest.mark.skipif(bool(MISSING), reason="needs Xvfb and xwd (apt-get install xvfb x11-apps)")


@pytest.fixture(scope="module")
def display():
    """A real X server of our own; -displayfd lets it pick a free display number. -noreset: by
    default it resets whenever its last client leaves (after every xwd, or when a window closes),
    and a screenshot that arrives during a reset fails."""
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "800x600x24", "-nolisten", "tcp",
                             "-noreset"], pass_fds=[write], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    assert number, "Xvfb did not start"
    deadline = time.time() + 30  # it names its display as it starts listening; wait until it answers
    while subprocess.run(["xwd", "-root", "-silent", "-display", f":{number}"], capture_output=True).returncode:
        assert time.time() < deadline and xvfb.poll() is None, "Xvfb does not answer"
        time.sleep(0.2)
    yield f":{number}"
    xvfb.terminate()
    xvfb.wait(timeout=10)


def screenshot(display: str) -> np.ndarray:
    """The whole screen as an (height, width, 3) RGB array, from xwd's dump of a TrueColor screen
    (ZPixmap, 24 or 32 bits a pixel, blue in the lowest byte)."""
    for _ in range(5):  # BadMatch: a window was being mapped or resized during the grab; take it again
        r = subprocess.run(["xwd", "-root", "-silent", "-display", display], capture_output=True)
        if b"BadMatch" not in r.stderr:
            break
        time.sleep(0.05)
    assert r.returncode == 0, f"xwd: {r.stderr.decode(errors='replace')}"
    raw = r.stdout
    header = np.frombuffer(raw[:100], ">u4")
    header_size, width, height, byte_order, bits_per_pixel, bytes_per_line, ncolors = (
        int(header[i]) for i in (0, 4, 5, 7, 11, 12, 19))
    step = bits_per_pixel // 8
    assert step in (3, 4) and byte_order == 0, (bits_per_pixel, byte_order)  # LSBFirst: B, G, R(, unused)
    start = header_size + 12 * ncolors  # the colour map follows the header
    rows = np.frombuffer(raw[start:start + height * bytes_per_line], np.uint8).reshape(height, bytes_per_line)
    return rows[:, :width * step].reshape(height, width, step)[..., 2::-1]


def mountain_car_on_screen(shot: np.ndarray) -> bool:
    """MountainCar's frame: a 600x400 white background, the yellow flag and the black car and track."""
    white = (shot > 240).all(axis=-1).sum()
    yellow = ((shot[..., 0] > 150) & (shot[..., 1] > 150) & (shot[..., 2] < 80)).sum()
    dark_inside = (shot < 60).all(axis=-1)[100:500, 100:700].sum()  # Xvfb's black border excluded
    return white > 0.8 * 600 * 400 and yellow > 20 and dark_inside > 200


def play_in_window(display: str, script: str, *args) -> tuple[subprocess.CompletedProcess, list[np.ndarray]]:
    """Run a script with DISPLAY set (and no SDL_VIDEODRIVER), taking screenshots until it ends."""
    env = {k: v for k, v in os.environ.items() if k != "SDL_VIDEODRIVER"} | {"DISPLAY": display}
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shots, deadline = [], time.time() + 180
    while proc.poll() is None and time.time() < deadline:
        shots.append(screenshot(display))
        time.sleep(0.5)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), shots


@pytest.mark.slow
@needs_x
def test_see_plays_in_a_real_window(display, tmp_path):
    assert not mountain_car_on_screen(screenshot(display))  # nothing shown before
    r, shots = play_in_window(display, "see.py", "--episodes", "1")
    assert r.returncode == 0 and "episode 1: return -200.0" in r.stdout, r.stderr
    assert r.stderr == ""
    assert sum(map(mountain_car_on_screen, shots)) >= 3, "the window never showed MountainCar"
    frames = [s for s in shots if mountain_car_on_screen(s)]
    assert any((a != b).any() for a, b in zip(frames, frames[1:], strict=False)), "the car never moved"
    assert not mountain_car_on_screen(screenshot(display))  # and the window is gone


@pytest.mark.slow
@needs_x
def test_see_plays_an_exported_policy_in_a_real_window(display, trained_run, tmp_path):
    assert run_main("--model", trained_run / "final.keras", "--export", tmp_path / "served") == 0
    r, shots = play_in_window(display, "see.py", "--policy", tmp_path / "served" / "model.onnx", "--view",
                              "--episodes", "1")
    assert r.returncode == 0 and re.fullmatch(r"episode 1: return -\d+\.0\n", r.stdout), r.stderr
    assert sum(map(mountain_car_on_screen, shots)) >= 3, "the window never showed MountainCar"


@pytest.mark.slow
@needs_x
def test_view_plays_a_trained_model_in_a_real_window(display, trained_run):
    r, shots = play_in_window(display, "run.py", "--model", trained_run / "final.keras", "--view",
                              "--episodes", "1")
    assert r.returncode == 0, r.stderr  # a segmentation fault here would be -11
    assert "episode 1: return" in r.stdout
    assert sum(map(mountain_car_on_screen, shots)) >= 3, "the window never showed MountainCar"


@pytest.mark.slow
@pytest.mark.parametrize("script, args", [("see.py", []), ("run.py", ["--model", "MODEL", "--view"])])
def test_a_display_without_a_server_is_a_clear_error(trained_run, tmp_path, script, args):
    args = [str(trained_run / "final.keras") if a == "MODEL" else a for a in args]
    env = {k: v for k, v in os.environ.items() if k != "SDL_VIDEODRIVER"} | {"DISPLAY": ":4711"}
    r = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "cannot open a window" in lines[0], r.stderr


def test_see_random_agent_records_video_without_loading_tensorflow(tmp_path):
    r = script("see.py", "--episodes", "1", "--video", "v", "--seed", "3", cwd=tmp_path,
               env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = imported_modules(r)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "episode 1: return -200.0" in r.stdout  # a random agent never reaches the flag in 200 steps
    assert len(list((tmp_path / "v").glob("*.mp4"))) == 1
    assert "gymnasium" in imported and not {"tensorflow", "keras"} & imported


def test_see_plays_an_atari_game_without_the_emulators_greeting_and_gifs_its_start(tmp_path):
    r = script("see.py", "--env", "ALE/Pong-v5", "--episodes", "2", "--gif", "pong.gif", "--gif-steps", "100",
               cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr  # ale_py writes two lines from C++ at its first env
    cut = re.fullmatch(r"episode 1: return -\d+\.0\npong\.gif: the first 100 of the episode's ([\d,]+) steps\n"
                       r"episode 2: return -\d+\.0\n", r.stdout)
    assert cut and int(cut[1].replace(",", "")) > 700, r.stdout  # a random agent's game of Pong is longer
    # the reset's frame and 100 steps' frames, every 2nd: 51 (the GIF writer may merge identical ones)
    assert 40 <= len(iio.imread(tmp_path / "pong.gif", index=None)) <= 51
