"""A training as users run it: real trainings (run.py's main in this process, as `python run.py`
runs it, or a real process where only a process shows the point: Ctrl-C, what reaches the
terminal), their files and curves, learning, playing snapshots back, resuming."""

import contextlib
import fcntl
import json
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
from conftest import FIXTURES, ROOT, checkpoint_state, run_main, scalars, script, summary

from loggers import shown
from plumbing.envs import make_env, run_episodes
from plumbing.keras_files import load_model
from plumbing.settings import parse_args
from run import QValues, epsilon_at


def test_training_writes_snapshots_summary_and_curves(trained_run):
    s = summary(trained_run)
    assert s["status"] == "finished" and s["env"] == "MountainCar-v0" and s["steps"] == 3000
    assert [e[0] for e in s["evals"]] == [1000, 2000, 3000] and s["final_eval_episodes"] == 3
    assert s["best_eval_mean"] == max(mean for _, mean in s["evals"])
    assert s["peak_rss_mb"] > 100 and s["steps_per_second"] > 0 and s["compile_seconds"] > 0
    # 16 gradient steps at every 16th step from --learning-starts 500 on: Adam's own count of them
    assert s["gradient_steps"] == 16 * sum(step % 16 == 0 for step in range(500, 3001)) == 2496
    assert {p.name for p in trained_run.glob("*.keras")} == {"step_2000.keras", "last.keras", "final.keras"}
    assert json.loads((trained_run / "args.json").read_text())["steps"] == 3000
    curves = scalars(trained_run)
    lengths, returns = ([v for _, v in curves[f"episode/{k}"]] for k in ("length", "return"))
    # 15 MountainCar episodes, each cut off at 200 steps without reaching the flag: return = -length
    assert lengths == [200.0] * 15 and returns == [-200.0] * 15
    assert curves["eval/mean_return"] == [tuple(e) for e in s["evals"]]
    assert curves["eval/final_mean_return"] == [(3000, pytest.approx(s["final_eval_mean"]))]
    assert curves["train/epsilon"] == [(2000, pytest.approx(epsilon_at(2000, parse_args([]))))]
    assert {"train/loss", "train/td_error", "train/target_distance", "perf/steps_per_second", "perf/rss_mb",
            "eval/avg_max_q"} <= set(curves)
    assert not {"train/is_weight", "train/tau"} & set(curves)  # only logged when --prioritized / --tau are on
    with np.load(trained_run / "checkpoint.npz") as saved:  # truncations are stored as not terminated
        assert len(saved["replay/action"]) == 3000 and saved["replay/terminated"].sum() == 0


def eval_line(capsys, *args) -> float:
    """The mean return that `run.py --model ... --eval` prints."""
    capsys.readouterr()
    assert run_main(*args, "--eval") == 0
    return float(re.search(r"mean return (-?[\d.]+) ±", capsys.readouterr().out)[1])


def test_final_and_last_snapshots_play_the_returns_the_summary_reports(trained_run, capsys):
    """final.keras and last.keras, played with no flag but --eval, give back the summary's final and last
    means: the files hold the weights that were evaluated, and --model in a run folder plays its final
    evaluation's start states (seed + 10,000) and number of episodes."""
    s = summary(trained_run)
    for name, key in [("final.keras", "final_eval_mean"), ("last.keras", "last_eval_mean")]:
        capsys.readouterr()
        assert run_main("--model", trained_run / name, "--eval") == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert line.startswith(f"MountainCar-v0: mean return {s[key]:.1f} ± ") and " over 3 episodes" in line, line


def test_short_cartpole_run_learns(tmp_path):
    """An easy env and a fixed seed: the greedy return must rise far above a random policy's ~22."""
    assert run_main("--env", "CartPole-v1", "--steps", "8000", "--seed", "1", "--epsilon-steps", "3000",
                    "--learning-starts", "1000", "--target-update", "250", "--eval-every", "4000",
                    "--final-eval-episodes", "20", "--logdir", tmp_path, "--name", "cp") == 0
    s = summary(tmp_path / "cp")
    env = gym.make("CartPole-v1")
    env.action_space.seed(0)
    random_mean = np.mean(list(run_episodes(env, lambda obs: env.action_space.sample(), 20, seed=0)))  # about 22
    assert s["final_eval_mean"] > 4 * random_mean, (s["evals"], s["final_eval_mean"], random_mean)
    assert s["last_eval_mean"] > 3 * random_mean, (s["last_eval_mean"], random_mean)  # not only the best


def test_same_seed_gives_identical_results(tmp_path):
    flags = ["--steps", "1000", "--learning-starts", "300", "--eval-every", "500", "--eval-episodes", "2",
             "--final-eval-episodes", "2", "--seed", "7", "--logdir", tmp_path]
    for name in ("a", "b"):
        assert run_main(*flags, "--name", name) == 0
    a, b = summary(tmp_path / "a"), summary(tmp_path / "b")
    assert a["evals"] == b["evals"] and a["final_eval_mean"] == b["final_eval_mean"]
    with np.load(tmp_path / "a" / "checkpoint.npz") as wa, np.load(tmp_path / "b" / "checkpoint.npz") as wb:
        assert wa.files == wb.files
        for key in wa.files:  # weights, Adam's moments, replay, random generator: all the same
            if key != "state":  # (its timings differ)
                np.testing.assert_array_equal(wa[key], wb[key])
    c = tmp_path / "c"
    assert run_main(*flags, "--seed", "8", "--name", "c") == 0  # another seed: another run
    with np.load(tmp_path / "a" / "checkpoint.npz") as wa, np.load(c / "checkpoint.npz") as wc:
        assert not np.array_equal(wa["replay/obs"], wc["replay/obs"])


def test_h5_video_and_gif(trained_run, tmp_path, capsys):
    import imageio.v3 as iio

    env = make_env("MountainCar-v0")
    final = load_model(str(trained_run / "final.keras"), env)
    final.save(tmp_path / "q.h5")
    obs = np.random.default_rng(0).uniform(-1, 1, size=(50, 2)).astype(np.float32)
    np.testing.assert_array_equal(QValues(load_model(str(tmp_path / "q.h5"), env))(obs), QValues(final)(obs))
    played = eval_line(capsys, "--model", tmp_path / "q.h5", "--episodes", "3", "--seed", "10000")
    assert played == pytest.approx(summary(trained_run)["final_eval_mean"], abs=0.05)  # the final evaluation's states
    assert run_main("--model", trained_run / "final.keras", "--video", tmp_path / "videos", "--gif",
                    tmp_path / "agent.gif", "--episodes", "1") == 0
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 1
    frames = iio.imread(videos[0], plugin="FFMPEG")
    assert frames.shape[0] > 100 and frames.shape[1:] == (400, 600, 3) and frames.std() > 0
    gif = iio.imread(tmp_path / "agent.gif")
    assert gif.shape[0] > 50 and gif.shape[1:3] == (200, 300)


ALL_ON = ["--double", "--dueling", "avg", "--prioritized", "--n-step", "3", "--tau", "0.01", "--loss", "huber",
          "--epsilon-schedule", "exponential"]


@pytest.mark.parametrize("variant", [ALL_ON, ["--dueling", "max", "--n-step", "2"]])
def test_variants_train_save_and_play(tmp_path, capsys, variant):
    assert run_main("--env", "CartPole-v1", "--steps", "1500", "--learning-starts", "500", "--eval-every", "1000",
                    "--eval-episodes", "2", "--final-eval-episodes", "3", "--log-every", "500", "--logdir", tmp_path,
                    "--name", "v", *variant) == 0
    s = summary(tmp_path / "v")
    mean = eval_line(capsys, "--env", "CartPole-v1", "--model", tmp_path / "v" / "final.keras", "--episodes", "3",
                     "--seed", "10000")
    assert mean == pytest.approx(s["final_eval_mean"], abs=0.05)
    if variant is ALL_ON:  # TensorBoard shows the importance weights and tau of the variants switched on
        assert {"train/is_weight", "train/tau", "train/td_error"} <= set(scalars(tmp_path / "v"))


@pytest.mark.parametrize("env", ["CartPole-v1", "Acrobot-v1", "LunarLander-v3"])
def test_env_preset_trains_and_plays(tmp_path, capsys, env):
    assert run_main("--env", env, "--steps", "1000", "--learning-starts", "500", "--eval-every", "1000",
                    "--eval-episodes", "1", "--final-eval-episodes", "1", "--logdir", tmp_path, "--name", "p") == 0
    s = summary(tmp_path / "p")
    assert s["env"] == env and s["steps"] == 1000 and len(s["evals"]) == 1
    assert json.loads((tmp_path / "p" / "args.json").read_text())["eval_every"] == 1000  # the flag beat the preset
    played = eval_line(capsys, "--model", tmp_path / "p" / "final.keras")  # the run's env, final evaluation's episode
    assert played == pytest.approx(s["final_eval_mean"], abs=0.05)


def test_non_finite_loss_stops_and_keeps_the_last_snapshot(tmp_path, capsys):
    # Adam moves every weight by about lr per step: at 1e38 the next forward pass overflows.
    code = run_main("--steps", "20000", "--lr", "1e38", "--learning-starts", "200", "--snapshot-every", "100",
                    "--eval-every", "0", "--logdir", tmp_path, "--name", "nan")
    assert code == 1 and "non-finite" in capsys.readouterr().err
    s = summary(tmp_path / "nan")
    assert s["status"] == "diverged" and s["steps"] < 20000
    assert (tmp_path / "nan" / "step_200.keras").is_file() and not (tmp_path / "nan" / "final.keras").exists()
    assert checkpoint_state(tmp_path / "nan")["step"] == 200  # resumable from there


def test_a_run_from_before_the_restructuring_resumes_and_plays(tmp_path, capsys):
    """tests/fixtures/old-run-unnamed-layers: a run written by an older run.py, interrupted at step
    1408 of 3000 (its snapshot's layers have Keras' automatic names; its checkpoint today's layout)."""
    run_dir = tmp_path / "old"
    shutil.copytree(FIXTURES / "old-run-unnamed-layers", run_dir)
    assert run_main("--resume", run_dir) == 0
    assert f"resuming {run_dir} at step 1408: epsilon 0.931" in capsys.readouterr().out
    assert summary(run_dir)["steps"] == 3000
    # 7 whole episodes before the interruption; the cut one is not continued, 1592 steps make 7 more
    assert summary(run_dir)["status"] == "finished" and summary(run_dir)["episodes"] == 14
    # the old checkpoint's Adam step count carries on: every 16th step from 200 on, 16 each, over both sessions
    assert summary(run_dir)["gradient_steps"] == 16 * sum(step % 16 == 0 for step in range(200, 3001))
    assert eval_line(capsys, "--model", run_dir / "step_1408.keras", "--episodes", "2") == -200.0


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


def test_a_log_line_shows_a_missing_value_as_a_dash_and_a_diverged_one_as_nan():
    """No loss or return yet is "-"; a NaN loss (a diverged run) must still read as nan."""
    assert shown(None, 8, 4) == "       -" and shown(0.25, 8, 4) == "  0.2500"
    assert shown(float("nan"), 8, 4).strip() == "nan"


@pytest.mark.slow
@pytest.mark.parametrize("onednn", [None, "1"])  # unset: run.py's own default (off); 1: TensorFlow's on AVX-512
@pytest.mark.parametrize("terminal", [True, False])
def test_a_normal_run_prints_only_its_own_lines(tmp_path, onednn, terminal):
    """On any CPU, with oneDNN on or off: no TensorFlow start-up lines, only the project's own lines
    (stdout) and, in a terminal, the progress bars (stderr); redirected to a file, no bars at all."""
    with Terminal() if terminal else contextlib.nullcontext() as tty:
        r = script("run.py", "--steps", "1000", "--learning-starts", "200", "--eval-every", "1000", "--eval-episodes",
                   "1", "--final-eval-episodes", "1", "--log-every", "100", "--snapshot-every", "500", "--name",
                   "clean", cwd=tmp_path, env={"TF_ENABLE_ONEDNN_OPTS": onednn},
                   **({"stderr": tty.fd} if terminal else {}))
    if terminal:
        r.stderr = tty.text
    assert r.returncode == 0, r.stderr
    own = ("network: float32; replay: ", "episode ", "saved step_", "final eval: ",
           "1000 steps and 800 gradient steps in ")
    assert all(line.startswith(own) for line in r.stdout.splitlines()), r.stdout
    assert sum(line.startswith("saved step_") for line in r.stdout.splitlines()) == 2
    # step 100: no gradient step yet (learning starts at 200) and no episode ended (they last 200 steps)
    first = next(line for line in r.stdout.splitlines() if line.startswith("episode "))
    assert re.search(r"step +100  loss +-  return +-  ", first) and "nan" not in r.stdout, r.stdout
    bars = [seg for seg in re.split(r"[\r\n]|\x1b\[A", r.stderr) if seg.strip()]
    assert all(re.match(r"(train|eval): +\d+%\|", seg) for seg in bars), r.stderr
    assert bool(bars) == terminal, r.stderr


class Terminal:
    """A pseudo-terminal for a child process's output (`fd`), read while it runs (else a full buffer
    would block the child); after the block, `text` holds all that was written to it."""

    def __enter__(self) -> "Terminal":
        self.reader, self.fd = pty.openpty()
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100, else 0 columns
        self.chunks = []
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()
        return self

    def read(self) -> None:
        while True:
            try:
                chunk = os.read(self.reader, 65536)
            except OSError:  # EIO: every writer has closed it
                return
            if not chunk:
                return
            self.chunks.append(chunk)

    def __exit__(self, *_) -> None:
        os.close(self.fd)  # the child has ended: this was the last writer
        self.thread.join(timeout=10)
        os.close(self.reader)
        self.text = b"".join(self.chunks).decode(errors="replace")
