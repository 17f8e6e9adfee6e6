"""The scripts as separate processes, for what only a real process shows: exit codes, what reaches
the terminal (one line for bad input, no TensorFlow noise), Ctrl-C, and scripts that must not
load TensorFlow at all."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, checkpoint_state, imported_modules, script, summary


def one_line_exit_2(r: subprocess.CompletedProcess, name: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{name}: error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("args, message", [(["--steps", "-5"], "--steps must be at least 1"),
                                           (["--gamma", "abc"], "invalid float value"),
                                           (["--view"], "add --model PATH")])
def test_bad_flags_are_one_line_exit_2_before_tensorflow_loads(tmp_path, args, message):
    r = script("run.py", *args, cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})  # Python lists its imports
    imported = imported_modules(r)
    assert message in one_line_exit_2(r, "run.py")
    assert "plumbing.settings" in imported and "tensorflow" not in imported
    assert list(tmp_path.iterdir()) == []  # nothing written, not even runs/


@pytest.mark.parametrize("onednn", ["0", "1"])  # TensorFlow's default on AVX-512 CPUs is 1, elsewhere 0
def test_a_bad_model_is_one_line_exit_2_with_tensorflow_loaded(tmp_path, onednn):
    from run import create_model

    create_model(4, 2, 8, 1e-3, 1.0).save(tmp_path / "cartpole.keras")  # CartPole's 4 inputs and 2 actions
    r = script("run.py", "--model", "cartpole.keras", "--eval", cwd=tmp_path, env={"TF_ENABLE_ONEDNN_OPTS": onednn})
    assert "pass the --env it was trained on" in one_line_exit_2(r, "run.py")
    assert [p.name for p in tmp_path.iterdir()] == ["cartpole.keras"]


@pytest.mark.parametrize("args, message", [(["--episodes", "0"], "--episodes must be at least 1"),
                                           (["--episodes", "x"], "invalid int value"),
                                           (["--env", "Pendulum-v1", "--video", "v"], "DQN needs Discrete actions")])
def test_see_bad_input_is_one_line_exit_2(tmp_path, args, message):
    assert message in one_line_exit_2(script("see.py", *args, cwd=tmp_path), "see.py")


def test_see_random_agent_records_video_without_loading_tensorflow(tmp_path):
    r = script("see.py", "--episodes", "1", "--video", "v", "--seed", "3", cwd=tmp_path,
               env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = imported_modules(r)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "episode 1: return -200.0" in r.stdout  # a random agent never reaches the flag in 200 steps
    assert len(list((tmp_path / "v").glob("*.mp4"))) == 1
    assert "gymnasium" in imported and not {"tensorflow", "keras"} & imported


def test_see_plays_an_atari_game_without_the_emulators_greeting(tmp_path):
    r = script("see.py", "--env", "ALE/Pong-v5", "--episodes", "1", "--gif", "pong.gif", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr  # ale_py writes two lines from C++ at its first env
    assert re.fullmatch(r"episode 1: return -\d+\.0\n", r.stdout) and (tmp_path / "pong.gif").is_file()


@pytest.mark.parametrize("name, args", [("see.py", []), ("run.py", ["--model", "MODEL", "--view"])])
def test_window_without_a_display_is_a_clear_error(trained_run, tmp_path, name, args):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    args = [str(trained_run / "final.keras") if a == "MODEL" else a for a in args]
    r = subprocess.run([sys.executable, str(ROOT / name), *args], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=120)
    assert "no display" in one_line_exit_2(r, name) and "--video DIR" in r.stderr


@pytest.mark.slow
def test_sigint_saves_a_snapshot_and_resume_continues(tmp_path):
    cmd = [sys.executable, str(ROOT / "run.py"), "--steps", "8000", "--learning-starts", "500",
           "--snapshot-every", "2000", "--eval-every", "4000", "--eval-episodes", "2", "--final-eval-episodes", "2",
           "--threads", "2", "--name", "int"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "int"
    deadline = time.time() + 120
    while not (run_dir / "step_2000.keras").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "--resume" in err, err
    s = summary(run_dir)
    assert s["status"] == "interrupted" and 2000 <= s["steps"] < 8000
    assert (run_dir / f"step_{s['steps']}.keras").is_file()
    assert checkpoint_state(run_dir)["step"] == s["steps"]

    r = script("run.py", "--resume", run_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 TensorFlow threads" in r.stdout  # the run's own --threads, not the command line's default (1)
    s2 = summary(run_dir)
    assert s2["status"] == "finished" and s2["steps"] == 8000 and (run_dir / "final.keras").is_file()
    assert s2["episodes"] > s["episodes"] and [e[0] for e in s2["evals"]] == [4000, 8000]
    assert s2["train_seconds"] > s["train_seconds"]


@pytest.mark.slow
@pytest.mark.parametrize("onednn", [None, "1"])  # unset: run.py's own default (off); 1: TensorFlow's on AVX-512
def test_a_normal_run_prints_only_its_own_lines(tmp_path, onednn):
    """On any CPU, with oneDNN on or off: no TensorFlow start-up lines, only the progress bars
    (stderr) and the project's own lines (stdout)."""
    r = script("run.py", "--steps", "1000", "--learning-starts", "200", "--eval-every", "1000", "--eval-episodes", "1",
               "--final-eval-episodes", "1", "--log-every", "500", "--snapshot-every", "500", "--name", "clean",
               cwd=tmp_path, env={"TF_ENABLE_ONEDNN_OPTS": onednn})
    assert r.returncode == 0, r.stderr
    own = ("replay: ", "episode ", "saved step_", "final eval: ", "1000 steps and 800 gradient steps in ")
    assert all(line.startswith(own) for line in r.stdout.splitlines()), r.stdout
    assert sum(line.startswith("saved step_") for line in r.stdout.splitlines()) == 2
    bars = [seg for seg in re.split(r"[\r\n]|\x1b\[A", r.stderr) if seg.strip()]
    assert bars and all(re.match(r"(train|eval): +\d+%\|", seg) for seg in bars), r.stderr


@pytest.mark.parametrize("args, message", [(["--repeats", "0"], "--repeats must be at least 1"),
                                           (["--steps", "x"], "invalid int value"),
                                           (["--atari", "Pong"], "--atari takes an Atari game id")])
def test_speed_bad_input_is_one_line_exit_2(tmp_path, args, message):
    assert message in one_line_exit_2(script("tools/speed.py", *args, cwd=tmp_path), "speed.py")
    assert list(tmp_path.iterdir()) == []
