"""The scripts as users run them: real envs, real files, real subprocesses."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, checkpoint_state, scalar_tags, script


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_training_writes_snapshots_summary_and_logs(trained_run):
    s = summary(trained_run)
    assert s["status"] == "finished" and s["env"] == "MountainCar-v0" and s["steps"] == 3000
    assert s["final_eval_episodes"] == 3 and s["solved"] is (s["final_eval_mean"] >= -110)
    assert -200 <= s["final_eval_mean"] <= -100 and s["peak_rss_mb"] > 100 and s["steps_per_second"] > 0
    assert [e[0] for e in s["evals"]] == [1000, 2000, 3000]
    assert (trained_run / "step_2000.keras").is_file() and (trained_run / "final.keras").is_file()
    assert json.loads((trained_run / "args.json").read_text())["steps"] == 3000
    assert s["best_eval_mean"] == max(mean for _, mean in s["evals"])
    assert s["last_eval_mean"] is not None and s["final_eval_std"] >= 0


def test_final_keras_is_the_best_evaluated_and_last_keras_the_last(trained_run):
    import keras

    final = keras.models.load_model(trained_run / "final.keras").get_weights()
    last = keras.models.load_model(trained_run / "last.keras").get_weights()
    with np.load(trained_run / "checkpoint.npz") as saved:
        for i, w in enumerate(final):
            np.testing.assert_array_equal(w, saved[f"best/{i}"])
        for i, w in enumerate(last):
            np.testing.assert_array_equal(w, saved[f"online/{i}"])


def test_short_cartpole_run_learns(tmp_path):
    """An easy env and a fixed seed: the greedy return must rise far above a random policy's ~22."""
    r = script("run.py", "--env", "CartPole-v1", "--steps", "12000", "--seed", "1", "--epsilon-steps", "4000",
               "--learning-starts", "1000", "--train-freq", "4", "--gradient-steps", "4", "--target-update", "250",
               "--gamma", "0.99", "--eval-every", "4000", "--final-eval-episodes", "20", "--name", "cp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = summary(tmp_path / "runs" / "cp")
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    env.action_space.seed(0)
    random_mean = np.mean([ret for ret in run_random(env, 20)])  # about 22
    assert s["final_eval_mean"] > 4 * random_mean, (s["evals"], s["final_eval_mean"], random_mean)
    assert s["last_eval_mean"] > 3 * random_mean, (s["last_eval_mean"], random_mean)  # not only the best


def run_random(env, episodes: int):
    from run import run_episodes

    return run_episodes(env, lambda obs: env.action_space.sample(), episodes, seed=0)


def test_same_seed_gives_identical_results(tmp_path):
    flags = ["--steps", "2500", "--learning-starts", "500", "--eval-every", "1000", "--eval-episodes", "2",
             "--final-eval-episodes", "2", "--seed", "7"]
    for name in ("a", "b"):
        assert script("run.py", *flags, "--name", name, cwd=tmp_path).returncode == 0
    a, b = summary(tmp_path / "runs" / "a"), summary(tmp_path / "runs" / "b")
    assert a["evals"] == b["evals"] and a["final_eval_mean"] == b["final_eval_mean"]
    wa, wb = (np.load(tmp_path / "runs" / n / "checkpoint.npz") for n in "ab")
    np.testing.assert_array_equal(wa["replay/obs"], wb["replay/obs"])
    import keras

    ka, kb = (keras.models.load_model(tmp_path / "runs" / n / "final.keras") for n in "ab")
    for x, y in zip(ka.get_weights(), kb.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_eval_prints_mean_std_and_verdict(trained_run, tmp_path):
    r = script("run.py", "--model", trained_run / "final.keras", "--eval", "--episodes", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "MountainCar-v0: mean return" in r.stdout and "over 5 episodes; solved:" in r.stdout


def test_h5_snapshot_plays_from_the_command_line(trained_run, tmp_path):
    import keras

    keras.models.load_model(trained_run / "final.keras").save(tmp_path / "q.h5")
    r = script("run.py", "--model", tmp_path / "q.h5", "--eval", "--episodes", "2", cwd=tmp_path)
    assert r.returncode == 0 and "over 2 episodes" in r.stdout, r.stderr


def test_video_and_gif_decode_back_to_frames(trained_run, tmp_path):
    import imageio.v3 as iio

    r = script("run.py", "--model", trained_run / "final.keras", "--video", tmp_path / "videos", "--gif",
               tmp_path / "agent.gif", "--episodes", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 2
    frames = iio.imread(videos[0], plugin="FFMPEG")
    assert frames.shape[0] > 100 and frames.shape[1:] == (400, 600, 3) and frames.std() > 0
    gif = iio.imread(tmp_path / "agent.gif")
    assert gif.shape[0] > 50 and gif.shape[1:3] == (200, 300)


def test_see_random_agent_records_video(tmp_path):
    r = script("see.py", "--episodes", "1", "--video", tmp_path / "v", "--seed", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "episode 1: return -200.0" in r.stdout  # a random agent never reaches the flag in 200 steps
    assert len(list((tmp_path / "v").glob("*.mp4"))) == 1


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Files that are not usable models for MountainCar."""
    import run

    d = tmp_path_factory.mktemp("bad")
    (d / "bad.keras").write_bytes(b"not a zip file")
    (d / "notes.txt").write_text("hello")
    run.create_model(4, 2, 8, 1e-3, 1.0).save(d / "cartpole.keras")  # CartPole's 4 inputs, 2 actions
    whole = (d / "cartpole.keras").read_bytes()
    (d / "truncated.keras").write_bytes(whole[:len(whole) // 2])  # what a crash mid-write used to leave
    return d


@pytest.mark.parametrize("args, message", [
    (["--model", "nope.keras", "--view"], "no model file at nope.keras"),
    (["--model", "BAD/cartpole.keras", "--video", "videos"], "pass the --env it was trained on"),
    (["--model", "BAD/bad.keras", "--eval"], "is not a loadable Keras model"),
    (["--model", "BAD/notes.txt", "--eval"], "is not a loadable Keras model"),
    (["--model", "BAD/cartpole.keras", "--eval"], "pass the --env it was trained on"),
    (["--env", "NoSuchEnv-v0"], "unknown env 'NoSuchEnv-v0'"),
    (["--env", "Pendulum-v1"], "DQN needs Discrete actions"),
    (["--steps", "-5"], "--steps must be at least 1"),
    (["--batch-size", "512", "--buffer-size", "100"], "larger than --buffer-size"),
    (["--epsilon-start", "1.5"], "--epsilon-start must be in [0, 1]"),
    (["--gamma", "abc"], "invalid float value"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--view"], "add --model PATH"),
    (["--resume", "runs/none"], "has no resume state"),
    (["--seed", "-1"], "--seed must be in [0, 2**31)"),
    (["--model", "BAD/truncated.keras", "--eval"], "is not a loadable Keras model"),
])
@pytest.mark.parametrize("onednn", ["0", "1"])  # TensorFlow's default on AVX-512 CPUs is 1, elsewhere 0
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, bad_files, args, message, onednn):
    args = [a.replace("BAD", str(bad_files)) for a in args]
    r = script("run.py", *args, cwd=tmp_path, timeout=120, env={"TF_ENABLE_ONEDNN_OPTS": onednn})
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, not even runs/


@pytest.mark.parametrize("name, args", [("see.py", []), ("run.py", ["--model", "MODEL", "--view"])])
def test_window_without_a_display_is_a_clear_error(trained_run, tmp_path, name, args):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    args = [str(trained_run / "final.keras") if a == "MODEL" else a for a in args]
    r = subprocess.run([sys.executable, str(ROOT / name), *args], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2 and "no display" in r.stderr and "--video DIR" in r.stderr, r.stderr


@pytest.mark.parametrize("args, message", [(["--episodes", "0"], "--episodes must be at least 1"),
                                           (["--episodes", "x"], "invalid int value"),
                                           (["--env", "Pendulum-v1", "--video", "v"], "DQN needs Discrete actions")])
def test_see_bad_input_is_one_line_exit_2(tmp_path, args, message):
    r = script("see.py", *args, cwd=tmp_path, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("see.py: error"), r.stderr
    assert message in lines[0]


def test_existing_run_name_is_refused(trained_run):
    r = script("run.py", "--name", "short", cwd=trained_run.parent.parent, timeout=120)
    assert r.returncode == 2 and "already exists" in r.stderr


def test_non_finite_loss_stops_and_keeps_the_last_snapshot(tmp_path):
    # Adam moves every weight by about lr per step: at 1e38 the next forward pass overflows.
    r = script("run.py", "--steps", "20000", "--lr", "1e38", "--learning-starts", "200",
               "--snapshot-every", "100", "--eval-every", "0", "--name", "nan", cwd=tmp_path)
    assert r.returncode == 1 and "non-finite" in r.stderr and "Traceback" not in r.stderr, r.stderr
    run_dir = tmp_path / "runs" / "nan"
    s = summary(run_dir)
    assert s["status"] == "diverged" and s["steps"] < 20000
    assert (run_dir / "step_200.keras").is_file() and not (run_dir / "final.keras").exists()
    assert checkpoint_state(run_dir)["step"] == 200  # resumable from there


def test_sigint_saves_a_snapshot_and_resume_continues(tmp_path):
    cmd = [sys.executable, str(ROOT / "run.py"), "--steps", "16000", "--learning-starts", "500",
           "--snapshot-every", "2000", "--eval-every", "4000", "--eval-episodes", "2", "--final-eval-episodes", "2",
           "--name", "int"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "int"
    deadline = time.time() + 120
    while not (run_dir / "step_2000.keras").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "--resume" in err, err
    s = summary(run_dir)
    assert s["status"] == "interrupted" and 2000 <= s["steps"] < 16000
    assert (run_dir / f"step_{s['steps']}.keras").is_file()
    assert checkpoint_state(run_dir)["step"] == s["steps"]

    r = script("run.py", "--resume", run_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s2 = summary(run_dir)
    assert s2["status"] == "finished" and s2["steps"] == 16000 and (run_dir / "final.keras").is_file()
    assert s2["episodes"] > s["episodes"] and [e[0] for e in s2["evals"]] == [4000, 8000, 12000, 16000]
    assert s2["train_seconds"] > s["train_seconds"]


ALL_ON = ["--double", "--dueling", "avg", "--prioritized", "--n-step", "3", "--tau", "0.01", "--loss", "huber",
          "--epsilon-schedule", "exponential"]


@pytest.mark.parametrize("variant", [["--double"], ["--tau", "0.01"], ["--epsilon-schedule", "exponential"],
                                     ["--n-step", "3"], ["--loss", "huber"], ["--dueling", "avg"], ["--dueling", "max"],
                                     ["--prioritized"], ALL_ON])
def test_variants_train_save_and_load(tmp_path, variant):
    r = script("run.py", "--env", "CartPole-v1", "--steps", "2000", "--learning-starts", "500", "--eval-every", "1000",
               "--eval-episodes", "2", "--final-eval-episodes", "3", "--name", "v", *variant, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert summary(tmp_path / "runs" / "v")["steps"] == 2000
    r = script("run.py", "--env", "CartPole-v1", "--model", tmp_path / "runs" / "v" / "final.keras", "--eval",
               "--episodes", "3", cwd=tmp_path)
    assert r.returncode == 0 and "CartPole-v1: mean return" in r.stdout, r.stderr
    if variant is ALL_ON:  # TensorBoard shows the importance weights and tau of the variants switched on
        assert {"train/is_weight", "train/tau", "train/td_error"} <= scalar_tags(tmp_path / "runs" / "v")


@pytest.mark.parametrize("env", ["CartPole-v1", "Acrobot-v1", "LunarLander-v3"])
def test_env_preset_trains_and_evaluates(tmp_path, env):
    r = script("run.py", "--env", env, "--steps", "1500", "--learning-starts", "500", "--eval-every", "1000",
               "--eval-episodes", "1", "--final-eval-episodes", "2", "--name", "p", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = summary(tmp_path / "runs" / "p")
    assert s["env"] == env and s["steps"] == 1500 and len(s["evals"]) == 1
    r = script("run.py", "--env", env, "--model", tmp_path / "runs" / "p" / "final.keras", "--eval", "--episodes", "2",
               cwd=tmp_path)
    assert r.returncode == 0 and f"{env}: mean return" in r.stdout, r.stderr


def test_preset_replaces_the_defaults_and_flags_still_win():
    import settings

    for env, preset in settings.PRESETS.items():
        args = settings.parse_args(["--env", env])
        assert all(getattr(args, k) == v for k, v in preset.items()), env
    assert settings.parse_args([]).steps == 120_000  # MountainCar-v0, the default env
    lunar = settings.PRESETS["LunarLander-v3"]["steps"]
    assert settings.parse_args(["--env", "LunarLander-v3"]).steps == lunar != 120_000
    assert settings.parse_args(["--env=LunarLander-v3", "--steps", "7"]).steps == 7
    assert settings.parse_args(["--steps", "7", "--env", "CartPole-v1"]).steps == 7


@pytest.mark.parametrize("onednn", [None, "0", "1"])  # unset: run.py's own default applies
def test_a_normal_run_prints_only_its_own_lines(tmp_path, onednn):
    """On any CPU, with oneDNN on or off: no TensorFlow start-up lines, only the progress bars
    (stderr) and the project's own lines (stdout)."""
    r = script("run.py", "--steps", "1500", "--learning-starts", "500", "--eval-every", "1000", "--eval-episodes", "1",
               "--final-eval-episodes", "1", "--log-every", "500", "--snapshot-every", "1000", "--name", "clean",
               cwd=tmp_path, env={"TF_ENABLE_ONEDNN_OPTS": onednn})
    assert r.returncode == 0, r.stderr
    own = ("episode ", "saved step_", "final eval: ", "1500 steps in ")
    assert all(line.startswith(own) for line in r.stdout.splitlines()), r.stdout
    bars = [seg for seg in re.split(r"[\r\n]|\x1b\[A", r.stderr) if seg.strip()]
    assert bars and all(re.match(r"(train|eval): +\d+%\|", seg) for seg in bars), r.stderr
