"""reinforce.py and a2c.py: returns, the loss and the normalisations against hand-computed values,
the numpy actor against its network, short real trainings that beat a random agent by far, Ctrl-C
and --resume, playing a snapshot, and the one-line errors."""

import json
import math
import os
import signal

import numpy as np
import pytest
from conftest import assert_close_across_paths, assert_same_greedy_actions, imported_modules, script, summary

import a2c
import policy_gradient
import reinforce
from plumbing.envs import make_env
from plumbing.keras_files import load_model, save_model
from policy_gradient import ActorCritic, RewardScale, RunningMeanStd, create_actor_critic


def test_n_step_returns_bootstrap_at_truncation_and_rollout_end_not_at_termination():
    # 3 steps of 2 envs. Env 0 terminates at step 1, then starts again; env 1 is truncated at step 0.
    rewards = np.array([[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]])
    terminated = np.array([[False, False], [True, False], [False, False]])
    truncated = np.array([[False, True], [False, False], [False, False]])
    next_values = np.array([[100.0, 10.0], [200.0, 300.0], [8.0, 16.0]])  # 100, 200, 300 must not be read
    returns = policy_gradient.discounted_returns(rewards, terminated, truncated, next_values, gamma=0.5)
    # env 0: 4 + 0.5 * 8 = 8 | 2 (terminated) | 1 + 0.5 * 2 = 2
    # env 1: 4 + 0.5 * 16 = 12 | 2 + 0.5 * 12 = 8 | 1 + 0.5 * 10 = 6 (truncated: V of its last state)
    np.testing.assert_allclose(returns, [[2.0, 6.0], [2.0, 8.0], [8.0, 12.0]])


def test_returns_to_go_of_whole_episodes():
    # REINFORCE's batch: an episode terminated after 2 steps, then one cut by the time limit after 3.
    rewards = np.ones((5, 1))
    terminated = np.array([[False], [True], [False], [False], [False]])
    truncated = np.array([[False], [False], [False], [False], [True]])
    next_values = np.array([[0.0], [0.0], [0.0], [0.0], [10.0]])
    returns = policy_gradient.discounted_returns(rewards, terminated, truncated, next_values, gamma=0.9)
    # 1.9, 1 | then 1 + 0.9 * 10 = 10 at every step (10 is the fixed point of 1 + 0.9 * V)
    np.testing.assert_allclose(returns[:, 0], [1.9, 1.0, 10.0, 10.0, 10.0], rtol=1e-6)


def test_policy_gradient_loss_on_a_tiny_batch():
    import tensorflow as tf

    # pi = (0.25, 0.75) and (0.75, 0.25); both took action 1; advantages 3 - 1 = 2 and 1 - 2 = -1
    logits = tf.constant([[0.0, math.log(3)], [math.log(3), 0.0]])
    values = tf.Variable([1.0, 2.0])
    actions, returns = tf.constant([1, 1]), tf.constant([3.0, 1.0])
    with tf.GradientTape() as tape:
        loss, parts = policy_gradient.policy_gradient_loss(logits, values, actions, returns, normalize=False,
                                                           value_coef=0.5, entropy_coef=0.1)
    assert float(parts["policy_loss"]) == pytest.approx(-(2 * math.log(0.75) - math.log(0.25)) / 2)  # -0.4055
    assert float(parts["value_loss"]) == pytest.approx((2**2 + 1**2) / 2)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # 0.5623 for both
    assert float(parts["entropy"]) == pytest.approx(entropy)
    assert float(loss) == pytest.approx(-0.405465 + 0.5 * 2.5 - 0.1 * entropy, abs=1e-5)
    # The critic learns from its squared error alone: 0.5 * 2 * (V - R) / 2, nothing from the policy term.
    np.testing.assert_allclose(tape.gradient(loss, values), [-1.0, 0.5], rtol=1e-6)
    # Normalised, the advantages 2 and -1 become 1 and -1.
    _, parts = policy_gradient.policy_gradient_loss(logits, values, actions, returns, True, 0.5, 0.1)
    assert float(parts["policy_loss"]) == pytest.approx(-(math.log(0.75) - math.log(0.25)) / 2, rel=1e-5)


def test_running_statistics_are_those_of_every_row_seen():
    rows = np.random.default_rng(0).normal([5.0, -2.0, 100.0], [1.0, 0.01, 30.0], size=(1000, 3))
    stats = RunningMeanStd.start((3,))
    for batch in np.split(rows, [1, 8, 300, 301]):  # batches of 1, 7, 292, 1 and 699 rows
        stats.update(batch)
    # They start as 1e-4 of a row with mean 0 and variance 1: the moments of that and all the rows.
    count = 1000 + 1e-4
    mean = rows.sum(axis=0) / count
    var = (1e-4 * (1 + mean**2) + ((rows - mean) ** 2).sum(axis=0)) / count
    assert stats.count == pytest.approx(count)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(stats.var, var, rtol=1e-4)


def test_rewards_are_divided_by_the_running_std_of_each_envs_discounted_return():
    scale = RewardScale(RunningMeanStd.start(), gamma=0.5, num_envs=2)
    # Step 1: env 0's episode ends. Discounted returns 1 and 2: mean 1.5, std 0.5, so rewards x 2.
    np.testing.assert_allclose(scale(np.array([1.0, 2.0]), np.array([True, False])), [2.0, 4.0], rtol=1e-3)
    # Step 2: env 0 starts again from 0 (4), env 1 goes on (0.5 * 2 + 4 = 5). Over 1, 2, 4, 5: std sqrt(2.5).
    np.testing.assert_allclose(scale(np.array([4.0, 4.0]), np.array([False, False])), [4 / 2.5**0.5] * 2, rtol=1e-3)
    scale = RewardScale(RunningMeanStd.start(), gamma=0.5, num_envs=2)
    for _ in range(200):  # returns of 1 again and again: their std shrinks to ~0, and scaled rewards are clipped
        scaled = scale(np.array([1.0, 1.0]), np.array([True, True]))
    np.testing.assert_array_equal(scaled, [10.0, 10.0])
    np.testing.assert_array_equal(RewardScale(None, 0.5, 2)(np.array([3.0, -1.0]), np.zeros(2, bool)), [3.0, -1.0])


def network(shared: bool, activation: str, standardize: bool):
    """An actor-critic with large random weights (so that a wrong layer order would show) and
    observation statistics far from the identity."""
    model = create_actor_critic(4, 3, 16, shared, 1e-3, 1.0, activation, standardize)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        weights = [rng.normal(size=w.shape) for w in layer.get_weights()]
        layer.set_weights([np.abs(w) + 0.1 for w in weights] if layer.name == "standardize" else weights)
    return model


@pytest.mark.numerics
@pytest.mark.parametrize("shared, activation, standardize", [(False, "relu", False), (True, "relu", False),
                                                             (False, "tanh", True), (True, "tanh", True)])
def test_the_numpy_actor_computes_what_the_network_does(shared, activation, standardize):
    model = network(shared, activation, standardize)
    actor = ActorCritic(model)
    obs = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32) * 30  # some standardized beyond +-10
    logits, values = (np.asarray(output, np.float64) for output in model(obs))
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert_close_across_paths(actor.probabilities(obs), expected)
    assert_close_across_paths(actor.values(obs), values[:, 0])
    assert_same_greedy_actions([actor.greedy(o) for o in obs], logits, decisive=1.0)
    # sampling follows the probabilities
    draws = actor.sample(np.repeat(obs[:1], 20_000, axis=0), np.random.default_rng(2))
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 20_000, expected[0], atol=0.015)


def test_a_snapshot_standardizes_with_the_statistics_training_saw(tmp_path):
    model = create_actor_critic(4, 2, 16, False, 1e-3, 1.0, "tanh", standardize=True)
    actor, rng = ActorCritic(model), np.random.default_rng(0)
    for _ in range(10):
        actor.observe(rng.normal([0.0, 3.0, -1.0, 50.0], [1.0, 0.1, 2.0, 20.0], size=(8, 4)).astype(np.float32))
    actor.store_statistics()
    save_model(model, tmp_path / "m.keras")
    loaded = ActorCritic(load_model(str(tmp_path / "m.keras"), make_env("CartPole-v1"), actor_critic=True))
    assert loaded.obs_stats.count == pytest.approx(80 + 1e-4)
    np.testing.assert_array_equal(loaded.obs_stats.mean, actor.obs_stats.mean)
    obs = rng.normal(size=(6, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded.probabilities(obs), actor.probabilities(obs), rtol=1e-6)
    assert not np.allclose(ActorCritic(create_actor_critic(4, 2, 16, False, 1e-3, 1.0, "tanh", True)).inputs(obs),
                           loaded.inputs(obs))  # the statistics do change what the network sees


def main_code(script_main, *args) -> int:
    try:
        return script_main([str(a) for a in args])
    except SystemExit as e:
        return e.code


SHORT = ["--steps", 20_000, "--eval-every", 10_000, "--eval-episodes", 5, "--final-eval-episodes", 10]


@pytest.mark.slow
def test_a_short_reinforce_training_beats_a_random_agent_by_far(tmp_path):
    # A random CartPole agent lasts ~22 steps; 20,000 steps are a fifteenth of the preset's budget.
    assert main_code(reinforce.main, *SHORT, "--logdir", tmp_path, "--name", "r") == 0
    s = summary(tmp_path / "r")
    assert s["status"] == "finished" and s["steps"] >= 20_000 and s["final_eval_episodes"] == 10
    assert s["final_eval_mean"] >= 150, s["evals"]
    assert 0 < s["final_sampled_eval_mean"] <= 500  # as it trains: sampling its actions
    assert {"final.keras", "last.keras", "checkpoint.npz"} <= {p.name for p in (tmp_path / "r").iterdir()}


@pytest.mark.slow
def test_a2c_stopped_by_ctrl_c_resumes_and_learns_acrobot(tmp_path, capsys):
    def interrupted(args, state, seed):  # a2c's rollouts, with Ctrl-C pressed in the 100th (8 envs x 16 steps)
        for i, batch in enumerate(a2c.rollouts(args, state, seed)):
            if i == 99:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    run_dir = tmp_path / "runs" / "stopped"
    args = ["--env", "Acrobot-v1", "--steps", 30_000, "--eval-every", 5_000, "--eval-episodes", 2,
            "--final-eval-episodes", 10, "--snapshot-every", 5_000, "--logdir", tmp_path / "runs", "--name", "stopped"]
    assert main_code(lambda argv: policy_gradient.main(argv, "a2c", interrupted), *args) == 130
    assert f"python a2c.py --resume {run_dir}" in capsys.readouterr().err
    stopped = summary(run_dir)
    assert stopped["status"] == "interrupted" and stopped["steps"] == 100 * 128 and stopped["gradient_steps"] == 100
    assert (run_dir / "step_12800.keras").is_file()
    assert main_code(a2c.main, "--resume", run_dir) == 0
    s = summary(run_dir)
    assert s["status"] == "finished" and s["steps"] == 235 * 128 and s["episodes"] > stopped["episodes"]
    assert s["gradient_steps"] == 235  # one per batch, counted on across the resume
    # an evaluation in each batch that passes a multiple of 5,000 steps, before and after the stop
    assert [step // 128 for step, _ in s["evals"]] == [5_000 // 128 + 1, 79, 118, 157, 196, 235]
    # Both running statistics went on across the resume: every observation acted on, every reward scaled.
    last = ActorCritic(load_model(str(run_dir / "last.keras"), make_env("Acrobot-v1"), actor_critic=True))
    assert last.obs_stats.count == pytest.approx(235 * 128)
    assert np.load(run_dir / "checkpoint.npz")["return_stats/2"] == pytest.approx(235 * 128)
    # A random agent (and this A2C with ReLU units and no normalisation) stays at -500: the time limit.
    assert s["final_eval_mean"] >= -300, s["evals"]
    # its snapshot plays, greedily, as users call it
    played = main_code(a2c.main, "--model", run_dir / "final.keras", "--env", "Acrobot-v1", "--eval", "--episodes", 3)
    assert played == 0
    assert "Acrobot-v1: mean return" in capsys.readouterr().out


def test_a_run_from_before_the_normalisation_flags_resumes_as_it_started(tmp_path):
    def interrupted(args, state, seed):  # Ctrl-C pressed in the 4th batch
        for i, batch in enumerate(a2c.rollouts(args, state, seed)):
            if i == 3:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    run_dir = tmp_path / "old"
    args = ["--activation", "relu", "--no-normalize-observations", "--no-scale-rewards", "--steps", 1_000,
            "--eval-every", 0, "--final-eval-episodes", 0, "--logdir", tmp_path, "--name", "old"]
    assert main_code(lambda argv: policy_gradient.main(argv, "a2c", interrupted), *args) == 130
    saved = json.loads((run_dir / "args.json").read_text())
    for name in ("activation", "normalize_observations", "scale_rewards"):  # as such a run's args.json was
        del saved[name]
    (run_dir / "args.json").write_text(json.dumps(saved))
    assert main_code(a2c.main, "--resume", run_dir) == 0
    assert summary(run_dir)["status"] == "finished"
    assert [layer.name for layer in load_model(str(run_dir / "last.keras"), make_env("CartPole-v1"), True).layers
            if layer.name == "standardize"] == []


@pytest.mark.parametrize("args, message", [
    (["--n-steps", "0"], "--n-steps must be at least 1"),
    (["--entropy-coef", "-0.1"], "--entropy-coef must be 0 or more"),
    (["--env", "ALE/Pong-v5"], "learn from pixels with run.py"),
    (["--env", "MountainCarContinuous-v0"], "Discrete actions: try CartPole-v1"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    assert main_code(a2c.main, *args, "--logdir", tmp_path / "runs") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_a_bad_flag_fails_before_tensorflow_loads(tmp_path):
    r = script("reinforce.py", "--episodes-per-update", 0, cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert "tensorflow" not in imported_modules(r)
    assert r.returncode == 2
    assert r.stderr.strip() == "reinforce.py: error: --episodes-per-update must be at least 1, got 0"
