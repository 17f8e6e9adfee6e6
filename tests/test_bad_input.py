"""Bad input as users meet it: one line on stderr that says what to do, exit code 2, nothing
written, never a traceback. Flags are answered before TensorFlow loads (the scripts as processes);
model files, envs and run directories that cannot be used are answered by run.py's main in this
process."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, imported_modules, one_line_exit_2, run_main, script

# ------------------------------------------------------------------- the scripts as processes


@pytest.mark.parametrize("args, message", [(["--steps", "-5"], "--steps must be at least 1"),
                                           (["--gamma", "abc"], "invalid float value"),
                                           (["--view"], "add --model PATH"),
                                           (["--model", "nope.keras", "--view"], "no model file at nope.keras"),
                                           (["--model", "served/model.onnx", "--eval"], "see.py --policy"),
                                           (["--resume", "runs/none"], "no such folder")])
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
                                           (["--env", "Pendulum-v1", "--video", "v"], "Discrete actions: try"),
                                           (["--gif-steps", "9"], "add --gif FILE")])
def test_see_bad_input_is_one_line_exit_2(tmp_path, args, message):
    assert message in one_line_exit_2(script("see.py", *args, cwd=tmp_path), "see.py")


@pytest.mark.parametrize("args, message", [(["--repeats", "0"], "--repeats must be at least 1"),
                                           (["--steps", "x"], "invalid int value"),
                                           (["--atari", "Pong"], "--atari takes an Atari game id")])
def test_speed_bad_input_is_one_line_exit_2(tmp_path, args, message):
    assert message in one_line_exit_2(script("tools/speed.py", *args, cwd=tmp_path), "speed.py")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [(["nowhere", "--evals", "e.csv"], "nowhere is not a bench directory"),
                                           (["--evals", "e.csv"], "no finished run"),
                                           (["--evals", "results.csv"], "results.csv is not a CSV this tool wrote")])
def test_atari_table_bad_input_is_one_line_exit_2(tmp_path, args, message):
    (tmp_path / "results.csv").write_text("config,seed,status\nenv=ALE/Pong-v5,0,finished\n")
    assert message in one_line_exit_2(script("tools/atari_table.py", *args, cwd=tmp_path), "atari_table.py")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["results.csv"]  # nothing written


@pytest.mark.parametrize("name, args", [("see.py", []), ("run.py", ["--model", "MODEL", "--view"])])
def test_window_without_a_display_is_a_clear_error(trained_run, tmp_path, name, args):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    args = [str(trained_run / "final.keras") if a == "MODEL" else a for a in args]
    r = subprocess.run([sys.executable, str(ROOT / name), *args], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=120)
    assert "no display" in one_line_exit_2(r, name) and "--video DIR" in r.stderr


# ------------------------------------------------------------------- run.py in this process


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Files that are not usable models for MountainCar."""
    from run import create_model

    d = tmp_path_factory.mktemp("bad")
    (d / "bad.keras").write_bytes(b"not a zip file")
    (d / "notes.txt").write_text("hello")
    create_model(4, 2, 8, 1e-3, 1.0).save(d / "cartpole.keras")  # CartPole's 4 inputs, 2 actions
    whole = (d / "cartpole.keras").read_bytes()
    (d / "truncated.keras").write_bytes(whole[:len(whole) // 2])  # what a crash mid-write used to leave
    return d


def one_line_error(capsys, *args) -> str:
    """run.main must exit 2 with exactly one line on stderr; returns it."""
    capsys.readouterr()
    assert run_main(*args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--model", "BAD/cartpole.keras", "--video", "videos"], "pass the --env it was trained on"),
    (["--model", "BAD/bad.keras", "--eval"], "is not a loadable Keras model"),
    (["--model", "BAD/notes.txt", "--eval"], "is not a loadable Keras model"),
    (["--model", "BAD/truncated.keras", "--eval"], "is not a loadable Keras model"),
    (["--env", "NoSuchEnv-v0"], "unknown env 'NoSuchEnv-v0'"),
    (["--env", "Pendulum-v1"], "Discrete actions: try CartPole-v1"),
])
def test_bad_model_env_or_run_dir_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, bad_files, args,
                                                                  message):
    monkeypatch.chdir(tmp_path)
    assert message in one_line_error(capsys, *[a.replace("BAD", str(bad_files)) for a in args])
    assert list(tmp_path.iterdir()) == []  # nothing written, not even runs/


def test_existing_run_name_is_refused(trained_run, capsys):
    assert "already exists" in one_line_error(capsys, "--logdir", trained_run.parent, "--name", "short")


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory):
    """A run directory as a crash after its second checkpoint leaves it: no summary.json."""
    logdir = tmp_path_factory.mktemp("unfinished")
    assert run_main("--steps", "1000", "--learning-starts", "200", "--eval-every", "0", "--snapshot-every", "500",
                    "--final-eval-episodes", "0", "--logdir", logdir, "--name", "u") == 0
    (logdir / "u" / "summary.json").unlink()
    return logdir / "u"


def spoil_args(key: str, value):
    def spoil(run_dir):
        args = json.loads((run_dir / "args.json").read_text())
        (run_dir / "args.json").write_text(json.dumps({**args, key: value}))
    return spoil


def truncate_checkpoint(run_dir):
    data = (run_dir / "checkpoint.npz").read_bytes()
    (run_dir / "checkpoint.npz").write_bytes(data[:len(data) // 2])


def older_layout(run_dir):
    (run_dir / "checkpoint.npz").unlink()
    (run_dir / "resume").mkdir()
    (run_dir / "resume" / "state.json").write_text('{"step": 500}')


def no_checkpoint_yet(run_dir):
    (run_dir / "checkpoint.npz").unlink()


@pytest.mark.parametrize("spoil, message", [
    (spoil_args("buffer_size", 4000), "the saved replay has capacity 50000, this run uses 4000"),
    (spoil_args("env", "CartPole-v1"), "checkpoint.npz cannot be resumed"),  # another env's network shapes
    (truncate_checkpoint, "checkpoint.npz cannot be resumed (BadZipFile"),
    (older_layout, "was written by an older run.py"),
    (no_checkpoint_yet, "has no complete checkpoint yet"),
])
def test_resume_of_a_directory_that_cannot_continue_is_one_line(tmp_path, capsys, unfinished_run, spoil, message):
    run_dir = tmp_path / "u"
    shutil.copytree(unfinished_run, run_dir)
    spoil(run_dir)
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    assert message in one_line_error(capsys, "--resume", run_dir)
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before  # nothing written
