"""The algorithm's pieces on small hand-made inputs, in process."""

import argparse
import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_close_across_paths, assert_same_greedy_actions

import atari
import run
from plumbing import dqn_run
from plumbing.envs import make_env
from plumbing.keras_files import load_model, save_model
from replay_buffer import Batch, ReplayBuffer
from run import Dueling, QValues, create_model, epsilon_greedy

FIXTURES = Path(__file__).parent / "fixtures"


def epsilon(step: int, start: float, end: float, steps: int, schedule: str = "linear", decay: float = 1.0) -> float:
    """run.epsilon_at with these settings."""
    return run.epsilon_at(step, argparse.Namespace(epsilon_start=start, epsilon_end=end, epsilon_steps=steps,
                                                   epsilon_schedule=schedule, epsilon_decay=decay))


@pytest.fixture
def model():
    keras.utils.set_random_seed(0)
    return create_model(obs_shape=2, n_actions=3, units=16, lr=1e-2, clip_norm=10.0)


def constant_q_model(values, lr: float = 1e-3) -> keras.Model:
    """A Q-network whose Q(s, .) is `values` for every state: zero weights, output bias = values."""
    m = create_model(2, len(values), 4, lr, 10.0)
    m.set_weights([np.zeros_like(w) for w in m.get_weights()[:-1]] + [np.array(values, np.float32)])
    return m


def random_replay(n: int, capacity: int = 100) -> tuple[ReplayBuffer, np.random.Generator]:
    """A replay filled with n random MountainCar-shaped transitions, and the generator used."""
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(capacity, (2,))
    for _ in range(n):
        buf.add(rng.normal(size=2), int(rng.integers(3)), -1.0, rng.normal(size=2), False, 0.99)
    return buf, rng


def test_action_mask_selects_q_values(model):
    obs = np.array([[0.1, -0.2], [0.3, 0.4]], np.float32)
    all_q = model([obs, np.ones((2, 3), np.float32)]).numpy()
    one_hot = np.eye(3, dtype=np.float32)[[2, 0]]
    taken = model([obs, one_hot]).numpy()
    np.testing.assert_allclose(taken, all_q * one_hot, rtol=1e-6)
    assert taken[0, 0] == taken[0, 1] == 0 and taken[0, 2] == pytest.approx(all_q[0, 2])


@pytest.mark.numerics
def test_numpy_forward_matches_keras(model):
    obs = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    keras_q = model([obs, np.ones((50, 3), np.float32)]).numpy()
    q_values = QValues(model)
    assert q_values.in_numpy  # the numpy forward pass, not the compiled fallback
    assert_close_across_paths(q_values(obs), keras_q)
    assert_same_greedy_actions([q_values.greedy(o) for o in obs], keras_q)  # one at a time


def test_bellman_target_bootstraps_through_truncation_not_termination():
    target = constant_q_model([1.0, 2.0, 3.0])  # max_a' Q(s', a') = 3 everywhere
    reward = np.array([-1.0, -1.0, 0.5], np.float32)
    next_obs = np.zeros((3, 2), np.float32)
    # transition 0 ended in a time-limit truncation: stored with terminated = 0
    terminated = np.array([0.0, 1.0, 0.0], np.float32)
    y = run.bellman_targets(target, reward, next_obs, terminated, discount=0.9).numpy()
    np.testing.assert_allclose(y, [-1 + 0.9 * 3, -1.0, 0.5 + 0.9 * 3], rtol=1e-6)
    # an n-step transition carries its own discount, gamma**k
    y = run.bellman_targets(target, reward, next_obs, terminated, discount=np.array([0.9, 0.9, 0.81], np.float32))
    np.testing.assert_allclose(y.numpy(), [-1 + 0.9 * 3, -1.0, 0.5 + 0.81 * 3], rtol=1e-6)


def test_a_time_limit_bootstraps_from_the_episodes_own_last_observation(trained_run):
    """3000 MountainCar steps: 15 episodes cut at 200 steps by the time limit, learned with 3-step returns.
    Each episode's last two steps are flushed as 2- and 1-step transitions that are not terminated (they
    still bootstrap), from the episode's last observation, not the next episode's first."""
    saved = np.load(trained_run / "checkpoint.npz")
    obs, next_obs, discount = saved["replay/obs"], saved["replay/next_obs"], saved["replay/discount"]
    last = np.flatnonzero(np.isclose(discount, 0.99))  # 1-step transitions: each episode's final step
    assert len(last) == 15 and np.allclose(discount[last - 1], 0.99**2) and saved["replay/terminated"].sum() == 0
    np.testing.assert_array_equal(next_obs[last - 1], next_obs[last])  # both bootstrap from the same state
    assert not (next_obs[last[:-1]] == obs[last[:-1] + 1]).all(axis=1).any()  # not the next episode's start


def test_update_moves_only_the_taken_action_toward_its_target():
    model, target = constant_q_model([0.0, 0.0, 0.0], lr=0.02), constant_q_model([1.0, 1.0, 1.0])
    model.set_weights([w + 0.01 for w in model.get_weights()])  # break the symmetry of zero weights
    fit = run.make_update(model, target)
    obs = np.ones((4, 8, 2), np.float32)
    batch = Batch(obs=obs, action=np.ones((4, 8), np.int32), reward=np.full((4, 8), 2.0, np.float32),
                  next_obs=obs, terminated=np.zeros((4, 8), np.float32),
                  discount=np.full((4, 8), 0.5, np.float32))  # y = 2 + 0.5 * 1 = 2.5
    before = QValues(model)(obs[0, :1])[0]
    losses = [float(fit(batch)[0]) for _ in range(60)]
    after = QValues(model)(obs[0, :1])[0]
    assert losses[-1] < 0.01 * losses[0]
    assert after[1] == pytest.approx(2.5, abs=0.05)
    # the untaken actions share only the hidden layers, so they move much less
    assert abs(after[0] - before[0]) < abs(after[1] - before[1])


@pytest.mark.numerics
def test_update_returns_the_updated_weights(model):
    target = create_model(2, 3, 16, 1e-2, 10.0)
    buf, rng = random_replay(100)
    _, _, weights = run.make_update(model, target)(buf.sample(rng, (2, 16)))
    for returned, current in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(returned.numpy(), current)
    q_values = QValues(model)
    q_values.refresh(weights)  # what the training loop does after each call
    obs = buf.obs[:10]
    assert_close_across_paths(q_values(obs), model([obs, np.ones((10, 3), np.float32)]))


def test_epsilon_schedule():
    assert epsilon(0, 1.0, 0.1, 100) == 1.0
    assert epsilon(50, 1.0, 0.1, 100) == pytest.approx(0.55)
    assert epsilon(100, 1.0, 0.1, 100) == pytest.approx(0.1)
    assert epsilon(10_000, 1.0, 0.1, 100) == pytest.approx(0.1)
    assert epsilon(30, 0.2, 0.2, 100) == 0.2  # constant epsilon: start = end
    assert epsilon(0, 1.0, 0.3, 0) == 0.3


def test_epsilon_greedy_action(model):
    q_values, obs, rng = QValues(model), np.array([0.1, 0.2], np.float32), np.random.default_rng(0)
    greedy = q_values.greedy(obs)
    assert all(epsilon_greedy(q_values, obs, 0.0, rng) == greedy for _ in range(100))
    counts = np.bincount([epsilon_greedy(q_values, obs, 1.0, rng) for _ in range(3000)], minlength=3)
    assert counts.min() > 900  # uniform over the 3 actions


def test_snapshot_round_trip_keras_and_h5(tmp_path, model):
    """save_model writes a snapshot (crash-safely) that load_model reads back, checked against the env,
    with the same Q-values."""
    obs = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    ones = np.ones((20, 3), np.float32)
    expected = model([obs, ones]).numpy()
    env = make_env("MountainCar-v0")  # 2 numbers per observation, 3 actions: the model's shapes
    for name in ("q.keras", "q.h5"):
        save_model(model, tmp_path / name)
        loaded = load_model(str(tmp_path / name), env)
        np.testing.assert_array_equal(loaded([obs, ones]).numpy(), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.h5", "q.keras"]  # no temporary file left


def test_checkpoint_round_trip(tmp_path, model):
    target = create_model(2, 3, 16, 1e-2, 10.0)
    replay, rng = random_replay(60, capacity=50)
    run.make_update(model, target)(replay.sample(rng, (3, 8)))  # gives Adam some state
    progress = run.Progress(step=60, episode=1, train_seconds=1.0, compile_seconds=0.5, wall_seconds=2.0,
                            evals=[[50, -200.0]], best_eval_step=50, best_eval_mean=-200.0)
    best = [w + 1 for w in model.get_weights()]
    state = run.TrainingState(model, target, replay, rng, progress, replay.obs[:5], best)
    dqn_run.save_checkpoint(tmp_path, state)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]  # one file, no temporary left

    loaded = run.TrainingState(create_model(2, 3, 16, 1e-2, 10.0), create_model(2, 3, 16, 1e-2, 10.0),
                               ReplayBuffer(50, (2,)), np.random.default_rng(99), run.Progress())
    dqn_run.load_checkpoint(tmp_path, loaded)
    # the wall time saved adds this process's time so far to the earlier sessions' 2 s
    assert loaded.progress.wall_seconds > progress.wall_seconds
    assert loaded.progress == dataclasses.replace(progress, wall_seconds=loaded.progress.wall_seconds)
    assert loaded.rng.random() == rng.random()
    np.testing.assert_array_equal(loaded.validation_obs, replay.obs[:5])
    for a, b in zip(loaded.best_weights, best, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.replay.obs, replay.obs)
    restored = loaded.model.get_weights() + loaded.target.get_weights()
    for a, b in zip(restored, model.get_weights() + target.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(loaded.model.optimizer.iterations) == int(model.optimizer.iterations) == 3
    for a, b in zip(loaded.model.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and the restored optimizer takes the same next step as the original
    batch = replay.sample(np.random.default_rng(5), (1, 8))
    run.make_update(model, target)(batch)
    run.make_update(loaded.model, loaded.target)(batch)
    for a, b in zip(loaded.model.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_double_dqn_target_lets_the_online_net_choose_and_the_target_net_value():
    online = constant_q_model([1.0, 5.0, 2.0])  # picks action 1
    target = constant_q_model([3.0, 0.0, 4.0])  # values action 1 at 0; its own max would be 4
    args = (np.array([-1.0, 2.0], np.float32), np.zeros((2, 2), np.float32), np.array([0.0, 1.0], np.float32))
    vanilla = run.bellman_targets(target, *args, discount=0.5).numpy()
    double = run.bellman_targets(target, *args, discount=0.5, online_model=online).numpy()
    np.testing.assert_allclose(vanilla, [-1 + 0.5 * 4, 2.0])
    np.testing.assert_allclose(double, [-1 + 0.5 * 0, 2.0])  # terminated: no bootstrap either way


def test_update_target_is_polyak_averaging_and_a_copy_at_tau_1():
    online, target = constant_q_model([1.0, 2.0, 3.0]), constant_q_model([0.0, 0.0, 0.0])
    before = target.get_weights()
    run.update_target(target, online, tau=0.1)
    for t, b, o in zip(target.get_weights(), before, online.get_weights(), strict=True):
        np.testing.assert_allclose(t, 0.1 * o + 0.9 * b, rtol=1e-6)
    np.testing.assert_allclose(target.get_weights()[-1], [0.1, 0.2, 0.3], rtol=1e-6)
    run.update_target(target, online)  # the default tau = 1: the hard copy
    for t, o in zip(target.get_weights(), online.get_weights(), strict=True):
        np.testing.assert_array_equal(t, o)


@pytest.mark.numerics
def test_update_with_tau_moves_the_target_after_every_gradient_step(model):
    """With --tau the target follows the online weights after each of the call's G steps:
    t_k = tau * o_k + (1 - tau) * t_k-1. Updating once per call (t = tau * o_3 + (1 - tau) * t_0)
    would give other weights."""
    target, tau = create_model(2, 3, 16, 1e-2, 10.0), 0.5
    buf, rng = random_replay(100)
    batch = buf.sample(rng, (3, 16))
    # The online weights after each step: the targets y are computed at the start of the call, so a copy
    # stepped one minibatch at a time against the frozen target (tau None) goes through the same o_1, o_2, o_3.
    twin, frozen = create_model(2, 3, 16, 1e-2, 10.0), create_model(2, 3, 16, 1e-2, 10.0)
    twin.set_weights(model.get_weights())
    frozen.set_weights(target.get_weights())
    step = run.make_update(twin, frozen)
    online = []
    for i in range(3):
        step(Batch(*(field[i:i + 1] for field in batch[:6])))
        online.append(twin.get_weights())
    expected = target.get_weights()
    for o in online:
        expected = [tau * ow + (1 - tau) * tw for ow, tw in zip(o, expected, strict=True)]
    once = [tau * ow + (1 - tau) * tw for ow, tw in zip(online[-1], target.get_weights(), strict=True)]
    run.make_update(model, target, tau=tau)(batch)
    for t, e in zip(target.get_weights(), expected, strict=True):  # one compiled call against three
        assert_close_across_paths(t, e)
    with pytest.raises(AssertionError):
        assert_close_across_paths(target.get_weights()[0], once[0])


def test_exponential_epsilon_schedule():
    assert epsilon(0, 1.0, 0.05, 0, "exponential", 0.99) == 1.0
    assert epsilon(10, 1.0, 0.05, 0, "exponential", 0.99) == pytest.approx(0.99**10)
    assert epsilon(10_000, 1.0, 0.05, 0, "exponential", 0.99) == 0.05  # floored at the end value


@pytest.mark.parametrize("mode, expected", [("avg", [[0.0, 2.0, 4.0]]), ("max", [[-2.0, 0.0, 2.0]])])
def test_dueling_aggregation_by_hand(mode, expected):
    value, advantage = np.array([[2.0]], np.float32), np.array([[1.0, 3.0, 5.0]], np.float32)
    # avg: 2 + A - 3;  max: 2 + A - 5
    np.testing.assert_allclose(Dueling(mode)([value, advantage]).numpy(), expected)


@pytest.mark.numerics
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_dueling_network_numpy_forward_mask_and_snapshots(tmp_path, mode):
    keras.utils.set_random_seed(0)
    model = create_model(2, 3, 16, 1e-2, 10.0, dueling=mode)
    obs = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    all_q = model([obs, np.ones((50, 3), np.float32)]).numpy()
    assert_close_across_paths(QValues(model)(obs), all_q)
    one_hot = np.eye(3, dtype=np.float32)[np.arange(50) % 3]  # the mask still picks one action's Q
    np.testing.assert_allclose(model([obs, one_hot]).numpy(), all_q * one_hot, rtol=1e-6)
    value, advantage = head_output(model, obs, "value"), head_output(model, obs, "advantage")
    reduce = np.mean if mode == "avg" else np.max
    expected = value + advantage - reduce(advantage, axis=1, keepdims=True)  # V (50, 1) broadcasts over actions
    assert_close_across_paths(all_q, expected)
    for name in ("q.keras", "q.h5"):
        model.save(tmp_path / name)
        loaded = keras.models.load_model(tmp_path / name, compile=False)
        assert QValues(loaded).dueling == mode and QValues(loaded).in_numpy
        np.testing.assert_array_equal(loaded([obs, np.ones((50, 3), np.float32)]).numpy(), all_q)


def head_output(model, obs, head: str) -> np.ndarray:
    """The output of the dueling network's `value` or `advantage` layer for `obs`."""
    return keras.Model(model.inputs[0], model.get_layer(head).output)(obs).numpy()


def test_huber_gradient_is_mse_near_zero_and_clipped_beyond_one():
    def grad(loss: str, error: float) -> float:
        fn = create_model(2, 1, 4, 1e-3, 10.0, loss=loss).loss
        q = tf.Variable([[0.0]])
        with tf.GradientTape() as tape:
            value = fn(tf.constant([[error]]), q)
        return float(tape.gradient(value, q)[0, 0])

    assert grad("mse", 0.5) == pytest.approx(-1.0) and grad("huber", 0.5) == pytest.approx(-0.5)
    assert grad("mse", 4.0) == pytest.approx(-8.0) and grad("huber", 4.0) == pytest.approx(-1.0)
    assert grad("huber", -4.0) == pytest.approx(1.0)


def test_update_scales_each_transition_by_its_importance_weight():
    def moved(weight) -> np.ndarray:
        model, target = constant_q_model([0.0, 0.0], lr=0.01), constant_q_model([0.0, 0.0])
        obs = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)  # two transitions, different states
        batch = Batch(obs=obs, action=np.array([[0, 1]], np.int32), reward=np.array([[1.0, 1.0]], np.float32),
                      next_obs=obs, terminated=np.ones((1, 2), np.float32), discount=np.full((1, 2), 0.9, np.float32),
                      weight=np.array([weight], np.float32))
        _, td, _ = run.make_update(model, target)(batch)
        np.testing.assert_allclose(td.numpy(), [[1.0, 1.0]])  # |y - Q| = |1 - 0| per transition
        return model.get_weights()[-1]  # the output biases of actions 0 and 1

    bias = moved([1.0, 0.0])  # only transition 0 (action 0) counts
    assert bias[0] > 0 and bias[1] == 0
    bias = moved([1.0, 1.0])
    assert bias[0] > 0 and bias[1] > 0


@pytest.mark.numerics
def test_q_values_of_other_networks_come_from_one_compiled_function():
    """A snapshot written before the layers were named (tests/fixtures/old-run-unnamed-layers)
    has no hidden_0/q layers: QValues then calls the network itself, with the same answers."""
    old = keras.models.load_model(FIXTURES / "old-run-unnamed-layers" / "step_1408.keras", compile=False)
    assert [layer.name for layer in old.layers if "dense" in layer.name] == ["dense", "dense_1", "dense_2"]
    q_values = QValues(old)
    obs = np.random.default_rng(0).uniform(-1, 1, size=(20, 2)).astype(np.float32)
    expected = old([obs, np.ones((20, 3), np.float32)]).numpy()
    assert not q_values.in_numpy
    assert_close_across_paths(q_values(obs), expected)
    assert_same_greedy_actions([q_values.greedy(o) for o in obs], expected)


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_loss_is_the_mean_td_loss_of_the_taken_actions(loss):
    """Q = 0 everywhere, y = r (terminated): the reported loss is mean_i l(r_i), whatever the
    number of actions, not that divided by the number of actions."""
    model, target = constant_q_model([0.0, 0.0, 0.0, 0.0]), constant_q_model([0.0, 0.0, 0.0, 0.0])
    model.compile(optimizer=keras.optimizers.Adam(1e-9), loss=keras.losses.Huber() if loss == "huber"
                  else keras.losses.MeanSquaredError())
    reward = np.array([[0.5, -2.0, 3.0]], np.float32)
    batch = Batch(obs=np.zeros((1, 3, 2), np.float32), action=np.array([[0, 3, 1]], np.int32), reward=reward,
                  next_obs=np.zeros((1, 3, 2), np.float32), terminated=np.ones((1, 3), np.float32),
                  discount=np.full((1, 3), 0.99, np.float32))
    mean_loss, td, _ = run.make_update(model, target)(batch)
    per_transition = [0.25, 4.0, 9.0] if loss == "mse" else [0.125, 1.5, 2.5]  # Huber: e^2/2 up to 1, then |e| - 1/2
    assert float(mean_loss) == pytest.approx(np.mean(per_transition), rel=1e-5)
    np.testing.assert_allclose(td.numpy(), np.abs(reward), rtol=1e-6)


@pytest.mark.numerics
def test_the_conv_network_is_natures_with_the_action_mask_and_plays_through_the_policy(tmp_path):
    model = create_model((4, 84, 84), 6, units=0, lr=1e-4, clip_norm=10.0, dueling="avg", torso=atari.conv_torso,
                         obs_dtype="uint8")
    assert model.inputs[0].dtype == "uint8"
    conv = [model.get_layer(f"conv_{i}") for i in range(3)]
    assert [(c.filters, c.kernel_size, c.strides) for c in conv] == [(32, (8, 8), (4, 4)), (64, (4, 4), (2, 2)),
                                                                     (64, (3, 3), (1, 1))]
    assert model.get_layer("features").units == 512 and conv[-1].output.shape == (None, 7, 7, 64)
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 4, 84, 84), dtype=np.uint8)
    q = model([frames, np.ones((5, 6), np.float32)]).numpy()
    taken = model([frames, np.eye(6, dtype=np.float32)[[0, 3, 5, 1, 2]]]).numpy()
    np.testing.assert_allclose(taken.sum(axis=1), q[np.arange(5), [0, 3, 5, 1, 2]], rtol=1e-5)
    assert np.count_nonzero(taken) <= 5  # every other action masked to 0
    q_values = QValues(model)
    assert not q_values.in_numpy  # no numpy path for convolutions: one compiled call
    assert_close_across_paths(q_values(frames), q)  # compiled, against Keras' eager call
    assert_same_greedy_actions([q_values.greedy(f) for f in frames], q)  # one at a time
    model.save(tmp_path / "conv.keras")
    loaded = keras.models.load_model(tmp_path / "conv.keras", compile=False)
    assert_close_across_paths(QValues(loaded)(frames), q)


def test_atari_acting_draws_what_the_single_env_loop_draws_for_one_game(model):
    q_values = QValues(model)
    obs = np.random.default_rng(1).uniform(-1, 1, size=(200, 2)).astype(np.float32)
    for epsilon in (0.0, 0.3, 1.0):
        one, batched = np.random.default_rng(7), np.random.default_rng(7)
        singles = [epsilon_greedy(q_values, o, epsilon, one) for o in obs]
        batches = [int(atari.epsilon_greedy(q_values, o[None], epsilon, batched, 3)[0]) for o in obs]
        assert singles == batches  # one game: the same actions from the same seed
    actions = atari.epsilon_greedy(q_values, obs, 0.0, np.random.default_rng(0), 3)
    np.testing.assert_array_equal(actions, np.argmax(q_values(obs), axis=1))
    random_share = np.mean(atari.epsilon_greedy(q_values, obs, 0.5, np.random.default_rng(0), 3) != actions)
    assert 0.2 < random_share < 0.45  # half explore, and a third of those pick the greedy action anyway
