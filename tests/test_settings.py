"""settings.py in this process: every bad flag value is one line and exit 2; presets and their precedence."""

import argparse
import json

import pytest

from plumbing import settings


@pytest.mark.parametrize("algo, args, message", [
    ("dqn", ["--steps", "-5"], "--steps must be at least 1"),
    ("dqn", ["--units", "0"], "--units must be at least 1"),
    ("dqn", ["--batch-size", "512", "--buffer-size", "100"], "larger than --buffer-size"),
    ("dqn", ["--epsilon-start", "1.5"], "--epsilon-start must be in [0, 1]"),
    ("dqn", ["--gamma", "abc"], "invalid float value"),
    ("dqn", ["--lr", "0"], "must be positive"),
    ("dqn", ["--tau", "2"], "--tau must be in (0, 1]"),
    ("dqn", ["--epsilon-decay", "0"], "--epsilon-decay must be in (0, 1]"),
    ("dqn", ["--learning-starts", "-1"], "--learning-starts must be 0 or more"),
    ("dqn", ["--dueling", "both"], "invalid choice: 'both'"),
    ("dqn", ["--no-such-flag"], "unrecognized arguments"),
    ("dqn", ["--view"], "add --model PATH"),
    ("dqn", ["--model", "m.keras"], "--model needs something to do"),
    ("dqn", ["--model", "m.keras", "--view", "--gif", "a.gif"], "use one or the other"),
    ("dqn", ["--model", "m.keras", "--eval", "--gif-steps", "50"], "add --gif FILE"),
    ("a2c", ["--model", "m.keras", "--gif", "a.gif", "--gif-steps", "0"], "--gif-steps must be at least 1"),
    ("dqn", ["--model", "m.keras", "--eval", "--resume", "runs/x"], "use one of them"),
    ("dqn", ["--episodes", "0"], "--episodes must be at least 1"),
    ("dqn", ["--seed", "-1"], "--seed must be in [0, 2**31)"),
    ("dqn", ["--seed", str(2**31)], "--seed must be in [0, 2**31)"),
    ("dqn", ["--num-envs", "4"], "several envs at once are for Atari games"),
    ("dqn", ["--env", "ALE/Pong-v5", "--num-envs", "0"], "--num-envs must be at least 1"),
    ("tabular", ["--bins", "0"], "--bins must be at least 1"),
    ("tabular", ["--gamma", "1.5"], "--gamma must be in [0, 1]"),
    ("tabular", ["--lr", "0"], "--lr must be positive"),
    # files named on the command line: checked before TensorFlow loads
    ("dqn", ["--model", "served/model.onnx", "--eval"], "play it without TensorFlow with python see.py --policy "
                                                        "served/model.onnx"),
    ("dqn", ["--model", "missing.keras", "--eval"], "no model file at missing.keras; pass a snapshot such as "
                                                    "runs/<name>/final.keras"),
    ("tabular", ["--model", "missing.npy", "--eval"], "such as runs/<name>/final.npy"),
    ("dqn", ["--resume", "runs/none"], "--resume runs/none: no such folder"),
])
def test_bad_flag_is_one_line_exit_2(capsys, algo, args, message):
    with pytest.raises(SystemExit) as e:
        settings.parse_args(args, algo)
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and message in lines[0], lines


def test_every_on_off_flag_can_be_switched_both_ways():
    for flag in ["double", "prioritized", "keep-best"]:
        assert settings.parse_args([f"--{flag}"]).__dict__[flag.replace("-", "_")] is True
        assert settings.parse_args([f"--no-{flag}"]).__dict__[flag.replace("-", "_")] is False


def test_preset_replaces_the_defaults_and_flags_still_win():
    for env, preset in settings.PRESETS.items():
        args = settings.parse_args(["--env", env])
        assert all(getattr(args, k) == v for k, v in preset.items()), env
    assert settings.parse_args([]).steps == 60_000  # MountainCar-v0, the default env
    lunar = settings.PRESETS["LunarLander-v3"]["steps"]
    assert settings.parse_args(["--env", "LunarLander-v3"]).steps == lunar != 60_000
    assert settings.parse_args(["--env=LunarLander-v3", "--steps", "7"]).steps == 7
    assert settings.parse_args(["--steps", "7", "--env", "CartPole-v1"]).steps == 7


def test_plain_switches_every_variant_off_and_flags_still_win(monkeypatch):
    every_variant_on = dict(n_step=3, double=True, prioritized=True, dueling="avg", tau=0.01, loss="huber")
    monkeypatch.setitem(settings.PRESETS, "CartPole-v1", every_variant_on)  # a preset that turns them all on
    assert {k: getattr(settings.parse_args(["--env", "CartPole-v1"]), k) for k in every_variant_on} == every_variant_on
    plain = settings.parse_args(["--env", "CartPole-v1", "--plain"])
    assert {k: getattr(plain, k) for k in every_variant_on} == settings.PLAIN == dict(
        n_step=1, double=False, prioritized=False, dueling="none", tau=None, loss="mse")
    assert settings.parse_args(["--env", "CartPole-v1", "--plain", "--double"]).double is True  # a flag still wins


def test_every_atari_game_gets_the_atari_preset_which_sets_every_dqn_setting():
    # So that a later change of the classic-control defaults cannot change an Atari run.
    dqn_settings = {"steps", "num_envs", "threads", "lr", "lr_end", "clip_norm", "loss", "gamma", "n_step", "double",
                    "prioritized", "dueling", "tau", "clip_rewards", "buffer_size", "batch_size", "learning_starts",
                    "train_freq", "gradient_steps", "target_update", "epsilon_start", "epsilon_end", "epsilon_steps",
                    "epsilon_schedule", "eval_every", "eval_episodes", "final_eval_episodes", "keep_best"}
    assert dqn_settings <= set(settings.ATARI)
    for env in ["ALE/Pong-v5", "ALE/Breakout-v5", "ALE/SpaceInvaders-v5"]:
        args = settings.parse_args(["--env", env])
        assert {k: getattr(args, k) for k in settings.ATARI} == settings.ATARI, env
    assert settings.parse_args(["--env", "ALE/Pong-v5", "--num-envs", "2"]).num_envs == 2


def test_a_resumed_run_learns_from_pixels_if_its_saved_env_is_atari(tmp_path):
    (tmp_path / "args.json").write_text('{"env": "ALE/Pong-v5"}')
    assert settings.learns_from_pixels(settings.parse_args(["--resume", str(tmp_path)]))
    (tmp_path / "args.json").write_text('{"env": "CartPole-v1"}')
    assert not settings.learns_from_pixels(settings.parse_args(["--resume", str(tmp_path)]))
    assert not settings.learns_from_pixels(argparse.Namespace(env="MountainCar-v0", resume=str(tmp_path / "missing")))
    assert settings.learns_from_pixels(settings.parse_args(["--env", "ALE/Breakout-v5"]))


@pytest.mark.parametrize("algo", ["dqn", "tabular", "a2c"])
def test_a_model_in_a_run_folder_plays_with_that_runs_settings_and_flags_still_win(tmp_path, algo):
    run = tmp_path / "run"
    run.mkdir()
    trained = dict(env="Acrobot-v1", seed=3, final_eval_episodes=7, threads=8, name="run", logdir="elsewhere",
                   steps=1234, **({"bins": 9} if algo == "tabular" else {"units": 32}))
    (run / "args.json").write_text(json.dumps(trained))
    (run / "final.keras").write_bytes(b"")  # parse_args only checks that the file is there
    played = settings.parse_args(["--model", str(run / "final.keras"), "--eval"], algo)
    assert (played.env, played.seed, played.episodes) == ("Acrobot-v1", 10_003, 7)  # its final evaluation's
    assert getattr(played, "bins" if algo == "tabular" else "units") == trained.get("bins", 32)
    assert (getattr(played, "threads", 1), played.name, played.logdir) == (1, None, "runs")  # this machine
    flags = settings.parse_args(["--model", str(run / "final.keras"), "--eval", "--env", "CartPole-v1", "--seed", "1",
                                 "--final-eval-episodes", "2"], algo)
    assert (flags.env, flags.seed, flags.final_eval_episodes) == ("CartPole-v1", 1, 2)
    alone = tmp_path / "alone.keras"  # outside a run folder: the defaults
    alone.write_bytes(b"")
    assert settings.parse_args(["--model", str(alone), "--eval"], algo).seed == 0
