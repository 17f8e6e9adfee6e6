"""A trained Q-network used outside training: run.py --export's SavedModel, ONNX and LiteRT files give
the Keras model's Q-values and greedy returns; see.py --policy plays the ONNX one without TensorFlow;
run.py --plot draws what the network learned; and what cannot be done is one line, exit 2."""

import logging
import re

import keras
import numpy as np
import pytest
from conftest import (
    assert_close_across_paths,
    assert_same_greedy_actions,
    imported_modules,
    one_line_exit_2,
    run_main,
    script,
)


def env_observations(env, count: int, seed: int = 0) -> np.ndarray:
    """`count` observations a random agent meets, as the network sees them."""
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    seen = []
    while len(seen) < count:
        seen.append(np.asarray(obs))
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    return np.stack(seen)


def greedy_play(env, q_values, episodes: int = 20, seed: int = 100) -> tuple[np.ndarray, list[int]]:
    """Every observation of `episodes` seeded greedy episodes, and the action taken at each."""
    from plumbing.envs import run_episodes

    seen, actions = [], []

    def act(obs):
        seen.append(np.asarray(obs))
        actions.append(int(np.argmax(q_values(seen[-1][None])[0])))
        return actions[-1]

    for _ in run_episodes(env, act, episodes, seed):
        pass
    return np.stack(seen), actions


# (env, dueling): a dense MountainCar net, a dueling one, and the Nature conv net on an Atari game
# whose untrained player loses its lives in a few hundred steps.
MODELS = [("MountainCar-v0", "none"), ("CartPole-v1", "avg"), ("ALE/Breakout-v5", "none")]


@pytest.fixture(scope="module", params=MODELS, ids=lambda m: f"{m[0]}-{m[1]}")
def exported(request, tmp_path_factory):
    """A model saved as training saves it, exported by run.py --export; its Keras Q-values and the env."""
    from atari import conv_torso
    from plumbing.envs import make_env
    from plumbing.keras_files import save_model
    from run import create_model

    env_id, dueling = request.param
    env = make_env(env_id)
    keras.utils.set_random_seed(3)
    frames = dict(torso=conv_torso, obs_dtype="uint8") if env_id.startswith("ALE/") else {}
    model = create_model(env.observation_space.shape, int(env.action_space.n), 64, 1e-3, 10.0, dueling=dueling,
                         **frames)
    folder = tmp_path_factory.mktemp("export")
    save_model(model, folder / "model.keras")
    assert run_main("--model", folder / "model.keras", "--env", env_id, "--threads", "1",
                    "--export", folder / "served") == 0

    def keras_q(obs):
        return model([obs, np.ones((len(obs), env.action_space.n), np.float32)]).numpy()

    keras_q.model = model
    return env, keras_q, folder / "served"


def onnx_q(served):
    from plumbing.serving import onnx_q_values

    return onnx_q_values(str(served / "model.onnx"))[0]


def saved_model_q(served):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(served / "saved_model"))
    return lambda obs: loaded.serve(obs).numpy()


def litert_q(served):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(served / "model.tflite"))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def q(obs):
        interpreter.resize_tensor_input(inp["index"], obs.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], obs.astype(inp["dtype"]))
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return q


# An export runs the network on another runtime (onnxruntime, TensorFlow's SavedModel, LiteRT), each with
# kernels of its own: the same tolerance as any two paths (conftest.py), relative to the largest Q-value.
@pytest.mark.numerics
@pytest.mark.parametrize("loader", [onnx_q, saved_model_q, litert_q])
def test_every_export_gives_the_keras_q_values(exported, loader):
    env, keras_q, served = exported
    obs = env_observations(env, 1000)
    expected, got = keras_q(obs), loader(served)(obs)
    assert got.shape == expected.shape == (1000, env.action_space.n)
    assert_close_across_paths(got, expected)
    assert np.ptp(expected) > 1e-3  # the observations differ, and so do their Q-values


@pytest.mark.numerics
def test_the_onnx_and_saved_model_exports_pick_the_greedy_actions_run_py_picks(exported):
    """On every state of 20 greedy episodes as run.py --model plays them. Whole episodes are not
    compared: one near-tie that the two runtimes break differently sends an episode elsewhere."""
    from run import QValues

    env, keras_q, served = exported
    states, actions = greedy_play(env, QValues(keras_q.model))
    assert len(set(actions)) > 1  # a policy that always took one action would prove little
    for export in (onnx_q(served), saved_model_q(served)):
        assert_same_greedy_actions(export(states).argmax(axis=1), keras_q(states))


def test_the_onnx_file_names_its_env(exported):
    from plumbing.serving import onnx_q_values

    env, _, served = exported
    expects = onnx_q_values(str(served / "model.onnx"))[1]
    assert expects["env_id"] == env.spec.id and expects["n_actions"] == env.action_space.n
    assert expects["shape"] == env.observation_space.shape


@pytest.mark.numerics
def test_see_plays_an_onnx_policy_without_tensorflow_as_run_py_plays_the_model(trained_run, tmp_path):
    assert run_main("--model", trained_run / "final.keras", "--export", tmp_path / "served") == 0
    keras_run = script("run.py", "--model", trained_run / "final.keras", "--eval", "--episodes", "20", "--seed", "0",
                       cwd=tmp_path)  # see.py's seed
    onnx_run = script("see.py", "--policy", "served/model.onnx", "--eval", "--episodes", "20", cwd=tmp_path,
                      env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = imported_modules(onnx_run)
    assert onnx_run.returncode == 0, onnx_run.stderr[-2000:]
    assert "onnxruntime" in imported and not {"tensorflow", "keras"} & imported
    line = onnx_run.stdout.strip().splitlines()[-1]  # MountainCar-v0 from the file's metadata, not a default
    assert re.fullmatch(r"MountainCar-v0: mean return -?\d+\.\d ± \d+\.\d over 20 episodes; solved: (yes|no) .*", line)
    # The same 20 start states, played by two runtimes: a near-tie either breaks differently can send one
    # episode elsewhere, and one of 20 returns in [-200, 0] moves the mean by at most 10.
    keras_mean = float(keras_run.stdout.strip().splitlines()[-1].split()[3])
    assert abs(float(line.split()[3]) - keras_mean) <= 10


def test_export_says_what_it_wrote_and_nothing_else(trained_run, tmp_path, capfd, caplog):
    """One line naming the four files, and no warning: on stderr, or logged (Keras warns through absl's logger,
    which pytest catches, that HDF5 is a legacy format)."""
    capfd.readouterr()
    assert run_main("--model", trained_run / "final.keras", "--export", tmp_path / "served") == 0
    out, err = capfd.readouterr()
    names = ["saved_model", "model.onnx", "model.tflite", "model.h5"]
    assert out == "wrote " + " ".join(str(tmp_path / "served" / name) for name in names) + "\n" and err == "", err
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_see_writes_a_gif_of_an_onnx_policy(trained_run, tmp_path):
    assert run_main("--model", trained_run / "final.keras", "--export", tmp_path / "served") == 0
    r = script("see.py", "--policy", "served/model.onnx", "--gif", "policy.gif", "--episodes", "1", cwd=tmp_path)
    assert r.returncode == 0 and re.fullmatch(r"episode 1: return -\d+\.0\n", r.stdout), r.stderr
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "policy.gif", index=None).shape[0] > 10  # an animation of the episode


# ---------------------------------------------------------------------------- the picture


@pytest.mark.numerics
def test_the_value_map_is_the_networks_max_and_argmax_on_the_grid(trained_run):
    import value_map
    from plumbing.envs import make_env
    from plumbing.keras_files import load_model
    from run import QValues

    env = make_env("MountainCar-v0")
    q_values = QValues(load_model(str(trained_run / "final.keras"), env))
    xs, ys, values, actions = value_map.value_and_policy(env, q_values, resolution=7)
    assert np.allclose(xs, np.linspace(-1.2, 0.6, 7)) and np.allclose(ys, np.linspace(-0.07, 0.07, 7))
    x, y = np.meshgrid(xs, ys)  # row i is velocity ys[i], column j position xs[j]
    scaled = np.stack([2 * (x + 1.2) / 1.8 - 1, 2 * (y + 0.07) / 0.14 - 1], axis=-1).reshape(-1, 2)  # to [-1, 1]
    q = q_values.model([scaled.astype(np.float32), np.ones((len(scaled), 3), np.float32)]).numpy()  # Keras' path
    assert_close_across_paths(values.ravel(), q.max(axis=1))
    assert_same_greedy_actions(actions.ravel(), q, decisive=0.8)  # a short training: a few states near a tie


def test_plot_writes_a_png_of_both_maps(trained_run, tmp_path):
    import imageio.v3 as iio

    assert run_main("--model", trained_run / "final.keras", "--plot", tmp_path / "maps" / "map.png") == 0
    picture = iio.imread(tmp_path / "maps" / "map.png")
    assert picture.shape[0] == 420 and picture.shape[1] == 1100  # 11 x 4.2 inches at 100 dpi
    assert len(np.unique(picture.reshape(-1, picture.shape[-1]), axis=0)) > 100  # a heat map, not a blank


# ---------------------------------------------------------------------------- bad input


def test_see_refuses_what_it_cannot_play(trained_run, tmp_path):
    assert run_main("--model", trained_run / "final.keras", "--export", tmp_path / "served") == 0
    (tmp_path / "notes.onnx").write_text("not a model")
    for args, message in [(["--policy", "notes.onnx"], "not an ONNX model"),
                          (["--policy", "missing.onnx"], "no such file"),
                          (["--policy", "served/model.onnx", "--env", "CartPole-v1"],
                           "(exported from MountainCar-v0), but CartPole-v1 has shape (4,) and 2 actions")]:
        r = script("see.py", *args, "--eval", cwd=tmp_path)
        assert message in one_line_exit_2(r, "see.py")


def test_plot_and_export_refuse_what_they_cannot_do(trained_run, tmp_path, tmp_path_factory, capsys):
    from plumbing.keras_files import save_model
    from run import create_model

    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    cartpole = tmp_path_factory.mktemp("cartpole") / "model.keras"
    save_model(create_model(4, 2, 8, 1e-3, 1.0), cartpole)  # CartPole's 4 numbers: no plane to draw on
    model = trained_run / "final.keras"
    for args, message in [(["--plot", tmp_path / "cp.png", "--env", "CartPole-v1", "--model", cartpole],
                           "two bounded numbers"),
                          (["--plot", tmp_path], "cannot write it"),
                          (["--export", tmp_path / "a_file"], "that is a file"),
                          (["--export", tmp_path / "full"], "the folder is not empty"),
                          (["--export", "/proc/served"], "cannot write in /proc")]:
        assert run_main("--model", model, *args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "full"]  # nothing half-written beside them
    assert (tmp_path / "a_file").read_text() == "keep me" and [p.name for p in (tmp_path / "full").iterdir()] == [
        "mine.txt"]
