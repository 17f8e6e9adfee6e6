"""Faults from outside: a full disk, a read-only or wrong --logdir, an env that returns NaN
(resume directories that cannot be continued are in test_bad_input.py). Each gets one clear line (or a clean stop) and
leaves no half-written file.

The full and read-only disks are real: a small tmpfs mounted in a private mount namespace
(`unshare -m`, or `unshare -rm` without root), seen only by the training under test.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ROOT, checkpoint_state, run_main

UNSHARE = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
CAN_MOUNT = shutil.which("unshare") is not None and subprocess.run(
    [*UNSHARE, "true"], capture_output=True).returncode == 0
if not CAN_MOUNT and os.environ.get("CI") == "true":
    raise RuntimeError("CI must be able to mount a small tmpfs in a private namespace (unshare -m)")
needs_mount = pytest.mark.skipif(not CAN_MOUNT, reason="needs unshare -m (or -rm) to mount a small tmpfs")


def in_small_filesystem(tmp_path, commands: str, options: str = "size=1m") -> subprocess.CompletedProcess:
    """Run shell `commands` in tmp_path/fs, a tmpfs of its own mounted with `options`; $PY is
    Python, $RUN is run.py, and whatever the commands copy to $OUT stays for the test to read."""
    (tmp_path / "fs").mkdir()
    (tmp_path / "out").mkdir()
    shell = f"mount -t tmpfs -o {options} tmpfs '{tmp_path}/fs' && cd '{tmp_path}/fs' && " + commands
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "PY": sys.executable, "RUN": str(ROOT / "run.py"),
           "OUT": str(tmp_path / "out")}
    return subprocess.run([*UNSHARE, "sh", "-c", shell], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
@needs_mount
def test_a_full_disk_stops_in_one_line_keeps_the_last_checkpoint_and_resume_continues(tmp_path):
    """1 MB fills up at the second or third snapshot; the run stops; after the disk grows,
    --resume continues from the last complete checkpoint to the end."""
    r = in_small_filesystem(tmp_path, textwrap.dedent("""\
        $PY $RUN --steps 4000 --snapshot-every 500 --eval-every 0 --learning-starts 200 --final-eval-episodes 2 \
            --name full 2>err.txt >/dev/null
        echo "first exit $?"
        tail -n 1 err.txt
        cp -a runs/full $OUT/stopped
        mount -o remount,size=64m .
        $PY $RUN --resume runs/full 2>/dev/null | grep resuming
        echo "resume exit $?"
        cp -a runs/full $OUT/resumed
        """))
    first, error, resuming, resumed = r.stdout.splitlines()
    assert first == "first exit 2" and "Traceback" not in r.stdout, r.stdout + r.stderr
    assert error.startswith("run.py: error: writing to runs/full failed (No space left on device)")
    assert "--resume runs/full" in error
    stopped = tmp_path / "out" / "stopped"
    assert not list(stopped.glob(".tmp-*"))  # the write that failed left nothing behind
    import keras

    for snapshot in stopped.glob("step_*.keras"):  # every snapshot on disk is complete
        keras.models.load_model(snapshot)
    step = checkpoint_state(stopped)["step"]
    assert step >= 500 and (stopped / f"step_{step}.keras").is_file()
    assert resuming.startswith(f"resuming runs/full at step {step}:") and resumed == "resume exit 0"
    assert json.loads((tmp_path / "out" / "resumed" / "summary.json").read_text())["steps"] == 4000


@pytest.mark.slow
@needs_mount
def test_a_read_only_logdir_is_one_line(tmp_path):
    r = in_small_filesystem(tmp_path, "$PY $RUN --logdir ro/runs --steps 100", options="ro,size=1m")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Read-only file system" in lines[0], r.stderr
    assert "pass a writable folder with --logdir" in lines[0]


def test_a_logdir_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").write_text("not a folder")
    assert run_main("--logdir", "notes", "--steps", "100") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot create notes/" in lines[0], lines
    assert (tmp_path / "notes").read_text() == "not a folder" and len(list(tmp_path.iterdir())) == 1


NAN_ENV = '''
import gymnasium as gym
import numpy as np


class NanAfter(gym.Wrapper):
    """MountainCar whose 700th step (over all episodes) returns a NaN observation."""
    steps = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        NanAfter.steps += 1
        return (np.full_like(obs, np.nan) if NanAfter.steps == 700 else obs), reward, terminated, truncated, info


gym.register("NanCar-v0", entry_point=lambda **kw: NanAfter(gym.make("MountainCar-v0", **kw)), max_episode_steps=200)
'''


def test_nan_observations_stop_cleanly_and_keep_the_last_snapshot(tmp_path, monkeypatch, capsys):
    (tmp_path / "nan_env.py").write_text(NAN_ENV)
    monkeypatch.syspath_prepend(tmp_path)
    assert run_main("--env", "nan_env:NanCar-v0", "--steps", "2000", "--learning-starts", "200",
                    "--snapshot-every", "500", "--eval-every", "0", "--logdir", tmp_path, "--name", "nan") == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "stopped: nan_env:NanCar-v0 returned a non-finite observation or reward at step 700")
    run_dir = tmp_path / "nan"
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "bad_env_output" and s["steps"] == 699
    assert checkpoint_state(run_dir)["step"] == 500 and not list(run_dir.glob(".tmp-*"))
    with np.load(run_dir / "checkpoint.npz") as saved:
        assert all(np.isfinite(saved[k]).all() for k in saved.files if k.startswith(("replay/obs", "online/")))
