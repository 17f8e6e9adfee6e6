"""Deep Q-learning (DQN) on Gymnasium's MountainCar, with TensorFlow 2 / Keras 3.

Train:     python run.py                              (writes runs/<name>/)
Watch:     python run.py --model runs/<name>/final.keras --view
Evaluate:  python run.py --model runs/<name>/final.keras --eval
Resume:    python run.py --resume runs/<name>
Curves:    tensorboard --logdir runs

The file reads top to bottom in the order the algorithm runs: settings, environment,
Q-network, acting, learning (Bellman targets and the gradient step), evaluation, the
training loop, and playing a saved model.
"""

import argparse
import functools
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

STARTED = time.time()  # wall-clock start, before the slow TensorFlow import

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # silence TensorFlow's C++ start-up noise
if __name__ == "__main__":
    # Keras imports pandas whenever it is installed (Ray Tune, used by bench.py, brings it) only
    # to accept DataFrames, which we never pass. Marking it absent saves ~120 MB per training.
    sys.modules.setdefault("pandas", None)

import gymnasium as gym
import keras
import numpy as np
import psutil
import tensorflow as tf
from tqdm import tqdm

from loggers import TensorBoardLogger
from replay_buffer import NStep, PrioritizedReplayBuffer, ReplayBuffer

# ---------------------------------------------------------------------------- settings


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as for every bad input
        fail(f"{message} (see python {self.prog} --help)")


def fail(message: str) -> None:
    """Bad input: one line on stderr saying what is wrong and what to do, exit code 2."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


# Tuned settings per env, on top of the defaults below (which are MountainCar-v0's); a flag
# given on the command line still wins. Measured with bench.py over 5 seeds (README).
PRESETS = {
    "MountainCar-v0": {},
    "CartPole-v1": dict(steps=50_000),
    "Acrobot-v1": dict(steps=100_000),
    # Episodes last up to 1,000 steps: evaluate less often, with fewer episodes.
    "LunarLander-v3": dict(steps=300_000, eval_every=10_000, eval_episodes=20),
}


def make_parser() -> Parser:
    p = Parser(description="Deep Q-learning on a Gymnasium env (default MountainCar-v0).",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run = p.add_argument_group("run")
    run.add_argument("--env", default="MountainCar-v0",
                     help=f"Gymnasium env id with a Box observation and Discrete actions; {', '.join(PRESETS)} "
                          "bring their own tuned defaults (see them with --env ID --help)")
    run.add_argument("--steps", type=int, default=120_000, help="environment steps to train for")
    run.add_argument("--seed", type=int, default=0, help="seeds the env, the network and the replay sampling")
    run.add_argument("--name", default=None, help="run name (default: a timestamp); output goes to LOGDIR/NAME")
    run.add_argument("--logdir", default="runs", help="root folder for runs")
    run.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help="continue an interrupted run from its last snapshot, with its saved settings")
    run.add_argument("--threads", type=int, default=1,
                     help="TensorFlow threads; the network is tiny, so more threads mostly add overhead")

    net = p.add_argument_group("Q-network and optimiser")
    net.add_argument("--units", type=int, default=128, help="width of each of the two hidden ReLU layers")
    net.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (at the start)")
    net.add_argument("--lr-end", type=float, default=2e-4,
                     help="anneal the learning rate linearly to this by the last step (= --lr: constant)")
    net.add_argument("--clip-norm", type=float, default=10.0, help="clip the global gradient norm to this")
    net.add_argument("--loss", choices=["mse", "huber"], default="mse",
                     help="squared error, or Huber (squared near 0, linear beyond 1: DQN's 'error clipping')")

    dqn = p.add_argument_group("DQN")
    dqn.add_argument("--gamma", type=float, default=0.99, help="discount factor")
    dqn.add_argument("--buffer-size", type=int, default=50_000, help="replay capacity in transitions")
    dqn.add_argument("--batch-size", type=int, default=64, help="transitions per gradient step")
    dqn.add_argument("--learning-starts", type=int, default=1_000,
                     help="env steps of pure exploration before the first update")
    dqn.add_argument("--train-freq", type=int, default=16, help="env steps between training calls")
    dqn.add_argument("--gradient-steps", type=int, default=16,
                     help="gradient steps per training call (one compiled call does all of them)")
    dqn.add_argument("--target-update", type=int, default=100,
                     help="env steps between hard copies of the online weights into the target network")
    dqn.add_argument("--tau", type=float, default=None,
                     help="instead of hard copies, move the target toward the online weights by this fraction "
                          "after every gradient step (Polyak averaging, Lillicrap et al. 2016; e.g. 0.005)")
    dqn.add_argument("--n-step", type=int, default=1,
                     help="learn from n-step returns r_t + g r_t+1 + ... + g^n max Q(s_t+n): rewards travel "
                          "back n steps per update instead of one (Sutton 1988; part of Rainbow)")
    dqn.add_argument("--double", action="store_true",
                     help="Double DQN (van Hasselt et al. 2016): the online network picks the next action, "
                          "the target network evaluates it, which curbs the overestimation of max")
    dqn.add_argument("--prioritized", action="store_true",
                     help="prioritized replay (Schaul et al. 2016): sample transitions in proportion to "
                          "(|TD error| + eps)^alpha, and correct the bias with importance weights")
    dqn.add_argument("--per-alpha", type=float, default=0.6,
                     help="--prioritized: how much priorities count (0: uniform sampling)")
    dqn.add_argument("--per-beta", type=float, default=0.4,
                     help="--prioritized: importance-weight exponent at the start, annealed to 1 by the last step")
    dqn.add_argument("--per-eps", type=float, default=1e-5,
                     help="--prioritized: added to |TD error| so that no transition's priority is 0")
    dqn.add_argument("--dueling", choices=["none", "avg", "max"], default="none",
                     help="Dueling network (Wang et al. 2016): separate value and advantage heads, "
                          "Q = V + A - mean(A) (avg) or - max(A) (max)")
    dqn.add_argument("--epsilon-start", type=float, default=1.0, help="initial exploration rate")
    dqn.add_argument("--epsilon-end", type=float, default=0.02, help="final exploration rate")
    dqn.add_argument("--epsilon-steps", type=int, default=20_000,
                     help="env steps to anneal epsilon linearly from start to end (start = end: constant)")
    dqn.add_argument("--epsilon-schedule", choices=["linear", "exponential"], default="linear",
                     help="linear over --epsilon-steps, or multiplied by --epsilon-decay every env step")
    dqn.add_argument("--epsilon-decay", type=float, default=0.9998,
                     help="per-step factor of the exponential schedule (0.9998: from 1 to 0.02 in ~20k steps)")

    ev = p.add_argument_group("evaluation, logging and snapshots")
    ev.add_argument("--eval-every", type=int, default=5_000, help="env steps between evaluations (0: never)")
    ev.add_argument("--eval-episodes", type=int, default=50,
                    help="greedy episodes per periodic evaluation (--keep-best picks by it: fewer is noisier)")
    ev.add_argument("--final-eval-episodes", type=int, default=100,
                    help="greedy episodes of the final evaluation (100 is the customary 'solved' test)")
    ev.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=True,
                    help="final.keras gets the weights that scored best in the periodic evaluations (the last "
                         "weights go to last.keras): DQN's greedy policy keeps changing while it trains")
    ev.add_argument("--snapshot-every", type=int, default=50_000, help="env steps between .keras snapshots")
    ev.add_argument("--log-every", type=int, default=2_000, help="env steps between log lines")

    play = p.add_argument_group("playing a saved model")
    play.add_argument("--model", default=None, help="a snapshot (.keras or .h5) to play instead of training")
    play.add_argument("--view", action="store_true", help="show the episodes in a window")
    play.add_argument("--eval", action="store_true", help="greedy evaluation; prints mean ± std and 'solved'")
    play.add_argument("--video", metavar="DIR", default=None, help="write an mp4 of every episode to DIR")
    play.add_argument("--gif", metavar="FILE", default=None, help="write the first episode as an animated GIF")
    play.add_argument("--episodes", type=int, default=None, help="episodes to play (default: 100 with --eval, else 3)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = make_parser()
    # First find the env alone (without acting on --help), to put its preset in place of the defaults.
    find_env = argparse.ArgumentParser(add_help=False)
    find_env.add_argument("--env", default=p.get_default("env"))
    p.set_defaults(**PRESETS.get(find_env.parse_known_args(argv)[0].env, {}))
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(a: argparse.Namespace) -> None:
    """Reject nonsense values before anything is created or written."""
    positive = ["steps", "units", "buffer_size", "batch_size", "train_freq", "gradient_steps", "n_step",
                "target_update", "eval_episodes", "snapshot_every", "log_every", "threads"]
    for name in positive:
        if getattr(a, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    for name in ["learning_starts", "epsilon_steps", "eval_every", "final_eval_episodes"]:
        if getattr(a, name) < 0:
            fail(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(a, name)}")
    for name in ["epsilon_start", "epsilon_end", "gamma", "per_alpha", "per_beta"]:
        if not 0.0 <= getattr(a, name) <= 1.0:
            fail(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(a, name)}")
    if not (a.lr > 0 and a.clip_norm > 0 and a.per_eps > 0):
        fail("--lr, --clip-norm and --per-eps must be positive")
    if not a.lr_end >= 0:
        fail(f"--lr-end must be 0 or more, got {a.lr_end}")
    if a.tau is not None and not 0 < a.tau <= 1:
        fail(f"--tau must be in (0, 1], got {a.tau}")
    if not 0 < a.epsilon_decay <= 1:
        fail(f"--epsilon-decay must be in (0, 1], got {a.epsilon_decay}")
    if a.batch_size > a.buffer_size:
        fail(f"--batch-size {a.batch_size} is larger than --buffer-size {a.buffer_size}; "
             "lower the batch or raise the buffer")
    if a.episodes is not None and a.episodes < 1:
        fail(f"--episodes must be at least 1, got {a.episodes}")
    playing = a.view or a.eval or a.video or a.gif
    if playing and not a.model:
        fail("--view, --eval, --video and --gif play a saved model: add --model PATH")
    if a.model and not playing:
        fail("--model needs something to do: add --view, --eval, --video DIR or --gif FILE")
    if a.view and (a.video or a.gif):
        fail("--view renders to a window, --video/--gif to files: use one or the other")
    if a.model and a.resume:
        fail("--model plays a snapshot and --resume continues training: use one of them")


# ------------------------------------------------------------------------- environment


def make_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    """Create an env, with a one-line error (exit 2) for ids or spaces DQN cannot handle."""
    try:
        env = gym.make(env_id, render_mode=render_mode)
    except gym.error.DependencyNotInstalled as e:
        fail(f"env {env_id!r} needs an extra package: {e}")
    except gym.error.Error as e:
        fail(f"unknown env {env_id!r} ({e}); try MountainCar-v0, CartPole-v1 or Acrobot-v1")
    if not isinstance(env.action_space, gym.spaces.Discrete):
        fail(f"env {env_id!r} has {type(env.action_space).__name__} actions; DQN needs Discrete actions")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        fail(f"env {env_id!r} needs a flat Box observation for this Q-network, "
             f"it has {env.observation_space}")
    space = env.observation_space
    if np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high)):
        # Scale bounded observations to [-1, 1]: MountainCar's velocity spans +-0.07 and its
        # position [-1.2, 0.6]; unscaled, the network can hardly tell velocities apart.
        env = gym.wrappers.RescaleObservation(env, -np.ones_like(space.low), np.ones_like(space.high))
    return env


# --------------------------------------------------------------------------- Q-network


@keras.saving.register_keras_serializable(package="dqn")
class Dueling(keras.layers.Layer):
    """Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a'), or - max_a' A(s, a') (Wang et al. 2016).

    Subtracting the mean (or max) advantage makes V and A identifiable: without it any
    constant could move between them. The max form makes A(s, greedy a) = 0, so V(s) is
    the greedy action's value; the mean form is what the paper found more stable.
    """

    def __init__(self, mode: str = "avg", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs):
        value, advantage = inputs
        reduce = keras.ops.mean if self.mode == "avg" else keras.ops.max
        return value + advantage - reduce(advantage, axis=1, keepdims=True)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


def create_model(obs_dim: int, n_actions: int, units: int, lr, clip_norm: float,
                 loss: str = "mse", dueling: str = "none") -> keras.Model:
    """Q(s, .) for all actions, multiplied by an action mask.

    With an all-ones mask one forward pass gives every action's Q-value (for acting and
    for the target); with a one-hot mask it gives only the taken action's, so the loss
    against a one-hot target trains that action alone. With `dueling` avg or max the last
    layer is split into a value head and an advantage head (the mask applies after them).
    """
    obs = keras.Input((obs_dim,), name="obs")
    mask = keras.Input((n_actions,), name="action_mask")
    h = keras.layers.Dense(units, activation="relu")(obs)
    h = keras.layers.Dense(units, activation="relu")(h)
    if dueling == "none":
        q = keras.layers.Dense(n_actions)(h)
    else:
        value, advantage = keras.layers.Dense(1, name="value")(h), keras.layers.Dense(n_actions, name="advantage")(h)
        q = Dueling(dueling)([value, advantage])
    model = keras.Model([obs, mask], keras.layers.Multiply()([q, mask]))
    # A loss object, not the string "mse": .h5 files of models compiled with "mse" do not load back.
    model.compile(optimizer=keras.optimizers.Adam(lr, global_clipnorm=clip_norm),
                  loss=keras.losses.Huber() if loss == "huber" else keras.losses.MeanSquaredError())
    return model


def dueling_mode(model: keras.Model) -> str:
    """'avg' or 'max' for a dueling network, 'none' for a plain one (for the numpy forward pass)."""
    return next((layer.mode for layer in model.layers if isinstance(layer, Dueling)), "none")


def load_model(path: str, env: gym.Env) -> keras.Model:
    """Load a .keras or .h5 snapshot and check it fits `env`, or fail with one line."""
    if not Path(path).is_file():
        fail(f"no model file at {path}; pass a snapshot such as runs/<name>/final.keras")
    try:
        model = keras.models.load_model(path, compile=False)  # playing needs no optimizer
    except Exception as e:  # noqa: BLE001 - any reason a file is not a model gets the same answer
        fail(f"{path} is not a loadable Keras model ({type(e).__name__}); pass a .keras or .h5 snapshot")
    obs_dim, n_actions = int(env.observation_space.shape[0]), int(env.action_space.n)
    shapes = [tuple(t.shape) for t in model.inputs]
    if shapes != [(None, obs_dim), (None, n_actions)] or model.output_shape != (None, n_actions):
        fail(f"{path} has inputs {shapes} and output {model.output_shape}, but {env.spec.id} has "
             f"{obs_dim} observations and {n_actions} actions; pass the --env it was trained on")
    return model


# ------------------------------------------------------------------------------ acting
# Acting calls the network once per env step. A Keras call costs ~1 ms and model.predict
# ~50 ms, the env step ~7 us, so we act with a numpy copy of the weights (a few us) and
# refresh the copy after each training call.


def numpy_weights(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy() for v in model.trainable_variables]


def q_values(weights: list[np.ndarray], obs: np.ndarray, dueling: str = "none") -> np.ndarray:
    """The Q-network's forward pass in numpy (all-ones mask): ReLU layers, then linear;
    for a dueling network the value and advantage heads combined as in `Dueling`."""
    head = 2 if dueling == "none" else 4
    h = obs
    for w, b in zip(weights[0:-head:2], weights[1:-head:2], strict=True):
        h = np.maximum(h @ w + b, 0.0)
    if dueling == "none":
        return h @ weights[-2] + weights[-1]
    value, advantage = h @ weights[-4] + weights[-3], h @ weights[-2] + weights[-1]
    reduce = np.mean if dueling == "avg" else np.max
    return value + advantage - reduce(advantage, axis=1, keepdims=True)


def greedy_action(weights: list[np.ndarray], obs: np.ndarray, dueling: str = "none") -> int:
    return int(np.argmax(q_values(weights, obs[None], dueling)[0]))


def epsilon_at(step: int, start: float, end: float, anneal_steps: int, schedule: str = "linear",
               decay: float = 1.0) -> float:
    """Linear annealing from start to end over anneal_steps, then constant; or exponential
    decay, start * decay**step, never below end."""
    if schedule == "exponential":
        return max(end, start * decay**step)
    if anneal_steps == 0:
        return end
    return start + (end - start) * min(step / anneal_steps, 1.0)


def epsilon_greedy_action(weights, obs, epsilon: float, rng: np.random.Generator, n_actions: int,
                          dueling: str = "none") -> int:
    if rng.random() < epsilon:
        return int(rng.integers(n_actions))
    return greedy_action(weights, obs, dueling)


# ---------------------------------------------------------------------------- learning


def bellman_targets(target_model: keras.Model, reward, next_obs, terminated, discount,
                    online_model: keras.Model | None = None):
    """y = r + discount * max_a' Q_target(s', a'); no bootstrap past a true termination.

    `discount` is gamma for 1-step transitions, gamma**k for a k-step return (--n-step).

    A time-limit truncation is not a termination (the car could have kept driving), so it
    is stored with terminated = 0 and still bootstraps. The separate, periodically copied
    target network keeps y from chasing the weights being updated (Mnih et al. 2015).
    With `online_model` (Double DQN) the online network chooses a' and the target network
    values it: y = r + discount * Q_target(s', argmax_a' Q_online(s', a')).
    """
    next_obs = tf.convert_to_tensor(next_obs)
    ones = tf.ones((tf.shape(next_obs)[0], target_model.output_shape[-1]))
    q_next = target_model([next_obs, ones])
    if online_model is None:
        next_value = tf.reduce_max(q_next, axis=1)
    else:
        chosen = tf.argmax(online_model([next_obs, ones]), axis=1)
        next_value = tf.gather(q_next, chosen, batch_dims=1)
    return reward + discount * (1.0 - terminated) * next_value


def update_target(target_model: keras.Model, model: keras.Model, tau: float = 1.0) -> None:
    """target <- tau * online + (1 - tau) * target: a hard copy at tau = 1, Polyak averaging below."""
    for t, o in zip(target_model.trainable_variables, model.trainable_variables, strict=True):
        t.assign(o if tau == 1.0 else tau * o + (1.0 - tau) * t)


def make_fit_batch(model: keras.Model, target_model: keras.Model, double: bool = False, tau: float | None = None):
    """Compile the DQN update: one call does G gradient steps on G minibatches.

    Inputs have shape (G, batch, ...); `weight` (--prioritized) holds importance weights.
    Returns the mean loss, each transition's |TD error| (G, batch) and the new weights.
    Doing several steps per call and compiling with XLA removes the per-call overhead that
    dominates such a small network (~6x faster than one call per env step in
    `bench.py --throughput`).
    The targets of all G minibatches are computed at once, from the networks as they are at
    the start of the call. With hard copies the target network is frozen during the call
    anyway; with --tau or --double they lag by at most G gradient steps.
    """
    n_actions = model.output_shape[-1]

    @tf.function(jit_compile=True)
    def fit_batch(obs, action, reward, next_obs, terminated, discount, weight=None):
        g, b = tf.shape(reward)[0], tf.shape(reward)[1]

        def flat(x):  # (G, batch, ...) -> (G * batch, ...)
            return tf.reshape(x, tf.concat([[g * b], tf.shape(x)[2:]], 0))

        online = model if double else None
        y = bellman_targets(target_model, flat(reward), flat(next_obs), flat(terminated), flat(discount), online)
        y = tf.reshape(y, (g, b))
        total, td_errors = 0.0, tf.TensorArray(tf.float32, size=g)
        for i in tf.range(g):
            mask = tf.one_hot(action[i], n_actions)
            with tf.GradientTape() as tape:
                # Masked prediction vs masked target: only the taken action's error counts.
                q_taken = model([obs[i], mask], training=True)
                # --prioritized: each transition's loss is scaled by its importance weight.
                loss = model.loss(mask * y[i][:, None], q_taken, sample_weight=None if weight is None else weight[i])
            td_errors = td_errors.write(i, tf.abs(y[i] - tf.reduce_sum(q_taken, axis=1)))
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            if tau is not None:
                update_target(target_model, model, tau)
            total += loss
        # Returning the new weights lets the caller copy them to numpy for acting at no
        # extra cost (reading the variables in separate calls costs ~0.1 ms each).
        return total / tf.cast(g, tf.float32), td_errors.stack(), [tf.identity(v) for v in model.trainable_variables]

    return fit_batch


# -------------------------------------------------------------------------- evaluation


def run_episodes(env: gym.Env, policy, episodes: int, seed: int | None = None):
    """Play whole episodes with `policy(obs) -> action`; yield each episode's return."""
    for i in range(episodes):
        obs, _ = env.reset(seed=seed if i == 0 else None)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        yield total


def evaluate(env: gym.Env, weights, episodes: int, seed: int | None = None, dueling: str = "none") -> np.ndarray:
    """Greedy returns over whole episodes on `env`, which must not be the training env
    (stepping the training env would cut its current episode short)."""
    policy = functools.partial(greedy_action, weights, dueling=dueling)
    bar = tqdm(run_episodes(env, policy, episodes, seed), total=episodes, desc="eval", leave=False)
    return np.array(list(bar))


def target_distance(weights: list[np.ndarray], target: keras.Model) -> float:
    """Mean |online - target| weight difference: a sawtooth with hard copies, smooth with --tau."""
    return float(np.mean([np.abs(w - t).mean() for w, t in zip(weights, numpy_weights(target), strict=True)]))


def average_max_q(weights, validation_obs: np.ndarray, dueling: str = "none") -> float:
    """Mean over a fixed set of states of max_a Q(s, a): a smooth signal of learning progress."""
    return float(q_values(weights, validation_obs, dueling).max(axis=1).mean())


# ------------------------------------------------------------------------ training loop


def train(args: argparse.Namespace, run_dir: Path, resuming: bool) -> dict:
    """Train a DQN agent, writing logs, snapshots and summary.json to run_dir; return the summary."""
    env, eval_env = make_env(args.env), make_env(args.env)  # evaluation never steps the training env
    obs_dim, n_actions = int(env.observation_space.shape[0]), int(env.action_space.n)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    # Linear learning-rate decay; the schedule counts gradient steps, not env steps.
    updates = (args.steps - args.learning_starts) // args.train_freq * args.gradient_steps
    lr = keras.optimizers.schedules.PolynomialDecay(args.lr, max(updates, 1), args.lr_end)
    model = create_model(obs_dim, n_actions, args.units, lr, args.clip_norm, args.loss, args.dueling)
    target = create_model(obs_dim, n_actions, args.units, lr, args.clip_norm, args.loss, args.dueling)
    target.set_weights(model.get_weights())
    if args.prioritized:
        replay = PrioritizedReplayBuffer(args.buffer_size, (obs_dim,), args.per_alpha, args.per_eps)
    else:
        replay = ReplayBuffer(args.buffer_size, (obs_dim,))
    st = dict(step=0, episode=0, train_seconds=0.0, compile_seconds=0.0, wall_seconds=0.0, evals=[],
              first_solved_step=None, first_solved_seconds=None, best_eval_step=None, best_eval_mean=None)
    validation_obs = None  # fixed states for the average-max-Q curve, drawn when learning starts
    best_weights = None  # the weights of the best periodic evaluation so far (--keep-best)
    if resuming:
        model, st, validation_obs, best_weights = load_resume_state(run_dir, target, replay, rng)
    fit_batch = make_fit_batch(model, target, args.double, args.tau)
    # Compiled, the hard copy costs ~0.3 ms instead of ~3 ms for target.set_weights(model.get_weights()).
    copy_to_target = tf.function(functools.partial(update_target, target, model))
    n_step = NStep(args.n_step, args.gamma)
    weights = numpy_weights(model)
    log = TensorBoardLogger(run_dir)
    if not resuming:  # the settings travel with the curves
        rows = "\n".join(f"| {k} | {v} |" for k, v in vars(args).items())
        log.text("settings", "| flag | value |\n|---|---|\n" + rows)

    # Ctrl-C only raises a flag that the loop checks between steps, so we never stop inside
    # a TensorFlow call or half-way through storing a transition. A second Ctrl-C kills.
    stop = []

    def on_sigint(*_):
        stop.append(True)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    signal.signal(signal.SIGINT, on_sigint)

    obs, _ = env.reset(seed=int(rng.integers(2**31)) if resuming else args.seed)
    eval_env.reset(seed=int(rng.integers(2**31)))  # seeds the evaluation episodes' start states too
    ep_return, ep_len, last_return, status = 0.0, 0, float("nan"), "finished"
    losses, td_errors, is_weights = [], [], []  # per training call, averaged into each log line
    compiled = False
    step = st["step"]
    t_start = t_log = time.perf_counter()
    step_log = step
    bar = tqdm(total=args.steps, initial=step, desc="train", unit="step", smoothing=0.05, mininterval=1)
    while step < args.steps and not stop:
        step += 1
        # act, step the env, store the transition
        epsilon = epsilon_at(step, args.epsilon_start, args.epsilon_end, args.epsilon_steps, args.epsilon_schedule,
                             args.epsilon_decay)
        action = epsilon_greedy_action(weights, obs, epsilon, rng, n_actions, args.dueling)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for transition in n_step.push(obs, action, reward, next_obs, terminated, truncated):
            replay.add(*transition)  # `truncated` is deliberately not stored: it still bootstraps
        obs, ep_return, ep_len = next_obs, ep_return + float(reward), ep_len + 1
        if terminated or truncated:
            st["episode"] += 1
            log.scalar("episode/return", ep_return, step)
            log.scalar("episode/length", ep_len, step)
            last_return, ep_return, ep_len = ep_return, 0.0, 0
            obs, _ = env.reset()

        # sample minibatches, compute Bellman targets, take gradient steps
        if step >= args.learning_starts and step % args.train_freq == 0:
            if validation_obs is None:
                validation_obs = replay.sample(rng, min(1000, len(replay)))["obs"]
            t_call = time.perf_counter()
            shape = (args.gradient_steps, args.batch_size)
            if args.prioritized:
                # beta rises to 1 (full bias correction) as training ends and the policy settles
                batch = replay.sample(rng, shape, beta=args.per_beta + (1 - args.per_beta) * step / args.steps)
                index = batch.pop("index")
                is_weights.append(float(batch["weight"].mean()))
            else:
                batch = replay.sample(rng, shape)
            loss, td_error, new_weights = fit_batch(**batch)
            if not compiled:  # the first call of a process traces and XLA-compiles the update
                st["compile_seconds"] += time.perf_counter() - t_call
                compiled = True
            loss = float(loss)
            if not np.isfinite(loss):
                status = "diverged"
                break
            td_error = td_error.numpy()
            if args.prioritized:
                replay.update_priorities(index, td_error)
            losses.append(loss)
            td_errors.append(float(td_error.mean()))
            weights = [w.numpy() for w in new_weights]
        if args.tau is None and step % args.target_update == 0:
            copy_to_target()

        # log, evaluate, snapshot
        if step % args.log_every == 0:
            now = time.perf_counter()
            sps, rss = (step - step_log) / (now - t_log), psutil.Process().memory_info().rss / 2**20
            mean_loss = float(np.mean(losses)) if losses else float("nan")
            mean_td = float(np.mean(td_errors)) if td_errors else float("nan")
            mean_is = float(np.mean(is_weights)) if is_weights else float("nan")
            tau = float("nan") if args.tau is None else args.tau
            for tag, value in [("train/loss", mean_loss), ("train/td_error", mean_td), ("train/epsilon", epsilon),
                               ("train/target_distance", target_distance(weights, target)), ("train/tau", tau),
                               ("train/is_weight", mean_is), ("perf/steps_per_second", sps), ("perf/rss_mb", rss)]:
                if np.isfinite(value):  # no loss before learning starts; no tau or weights unless switched on
                    log.scalar(tag, value, step)
            bar.write(f"episode {st['episode']:5d}  step {step:7d}  loss {mean_loss:8.4f}  "
                      f"return {last_return:7.1f}  epsilon {epsilon:.3f}  {sps:6.0f} steps/s  {rss:4.0f} MiB")
            t_log, step_log, losses, td_errors, is_weights = now, step, [], [], []
        if args.eval_every and step % args.eval_every == 0:
            mean = float(evaluate(eval_env, weights, args.eval_episodes, dueling=args.dueling).mean())
            st["evals"].append([step, mean])
            log.scalar("eval/mean_return", mean, step)
            if validation_obs is not None:
                log.scalar("eval/avg_max_q", average_max_q(weights, validation_obs, args.dueling), step)
            if env.spec.reward_threshold is not None and mean >= env.spec.reward_threshold:
                if st["first_solved_step"] is None:  # time to solve: training seconds so far, evaluations included
                    st["first_solved_step"] = step
                    st["first_solved_seconds"] = round(st["train_seconds"] + time.perf_counter() - t_start, 1)
            if args.keep_best and (st["best_eval_mean"] is None or mean >= st["best_eval_mean"]):
                st["best_eval_step"], st["best_eval_mean"], best_weights = step, mean, weights
        if step % args.snapshot_every == 0:
            model.save(run_dir / f"step_{step}.keras")
            now = dict(step=step, train_seconds=st["train_seconds"] + time.perf_counter() - t_start)
            save_resume_state(run_dir, model, target, replay, rng, {**st, **now}, validation_obs, best_weights)
        if step % 100 == 0:
            bar.update(100)
    bar.close()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if stop and status == "finished":
        status = "interrupted"
    st["train_seconds"] += time.perf_counter() - t_start

    final_returns = last_returns = None
    if status == "diverged":  # keep the last good snapshot: nothing is saved from these weights
        st["step"] = step - 1
    else:
        st["step"] = step
        save_resume_state(run_dir, model, target, replay, rng, st, validation_obs, best_weights)
        if status == "interrupted":
            model.save(run_dir / f"step_{step}.keras")
        else:
            model.save(run_dir / "last.keras")
            episodes, eval_seed = args.final_eval_episodes, args.seed + 10_000  # same start states for both
            if episodes:
                last_returns = evaluate(eval_env, weights, episodes, eval_seed, args.dueling)
            if best_weights is not None:
                model.set_weights(best_weights)
                weights = best_weights
            model.save(run_dir / "final.keras")
            if episodes:
                same = best_weights is None
                final_returns = last_returns if same else evaluate(eval_env, weights, episodes, eval_seed, args.dueling)
                log.scalar("eval/final_mean_return", final_returns.mean(), step)
    summary = write_summary(run_dir, args, st, status, final_returns, last_returns, env.spec.reward_threshold)
    log.close()
    return summary


def save_resume_state(run_dir: Path, model, target, replay, rng, st: dict, validation_obs, best_weights) -> None:
    """Everything --resume needs: the online model with its optimizer state, the target
    weights, the replay contents, the best weights so far, the counters and the random
    generator's state."""
    d = run_dir / "resume"
    d.mkdir(exist_ok=True)
    model.save(d / "online.keras")
    target.save_weights(d / "target.weights.h5")
    replay.save(d / "replay.npz")
    np.savez(d / "best_weights.npz", *(best_weights or []))
    extra = dict(rng=rng.bit_generator.state,
                 validation_obs=None if validation_obs is None else validation_obs.tolist())
    (d / "state.json").write_text(json.dumps({**st, **extra}))


def load_resume_state(run_dir: Path, target, replay, rng):
    """Inverse of save_resume_state; returns the online model, counters, validation states, best weights."""
    d = run_dir / "resume"
    model = keras.models.load_model(d / "online.keras")  # compiled, with Adam's moments restored
    target.load_weights(d / "target.weights.h5")
    replay.load(d / "replay.npz")
    st = json.loads((d / "state.json").read_text())
    rng.bit_generator.state = st.pop("rng")
    validation_obs = st.pop("validation_obs")
    with np.load(d / "best_weights.npz") as saved:
        best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))] or None
    return model, st, None if validation_obs is None else np.array(validation_obs, np.float32), best_weights


def write_summary(run_dir: Path, args, st: dict, status: str, final_returns, last_returns, threshold) -> dict:
    st["wall_seconds"] += time.time() - STARTED
    summary = dict(
        env=args.env, seed=args.seed, status=status, steps=st["step"], episodes=st["episode"],
        wall_seconds=round(st["wall_seconds"], 2), train_seconds=round(st["train_seconds"], 2),
        # Training throughput, without the one-time XLA compilation (reported separately).
        steps_per_second=round(st["step"] / max(st["train_seconds"] - st["compile_seconds"], 1e-9), 1),
        compile_seconds=round(st["compile_seconds"], 2),
        final_eval_mean=None, final_eval_std=None, final_eval_episodes=0,
        solved_threshold=threshold, solved=None, first_solved_step=st["first_solved_step"],
        first_solved_seconds=st["first_solved_seconds"],
        best_eval_step=st["best_eval_step"], best_eval_mean=st["best_eval_mean"],
        last_eval_mean=None if last_returns is None else float(last_returns.mean()),
        last_eval_std=None if last_returns is None else float(last_returns.std()),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        evals=st["evals"])
    if final_returns is not None:
        summary.update(final_eval_mean=float(final_returns.mean()), final_eval_std=float(final_returns.std()),
                       final_eval_episodes=len(final_returns))
        if threshold is not None:
            summary["solved"] = bool(final_returns.mean() >= threshold)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# ------------------------------------------------------------------------ saved models


def play_env(env_id: str, view: bool = False, video: str | None = None, gif: str | None = None) -> gym.Env:
    """An env to watch: rendered to a window, recorded as mp4s and/or collecting GIF frames."""
    headless = not any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"))
    if view and sys.platform.startswith("linux") and headless:  # SDL would crash trying to open a window
        fail("no display to open a window on; use --video DIR or --gif FILE, or set SDL_VIDEODRIVER=dummy")
    env = make_env(env_id, "human" if view else "rgb_array" if video or gif else None)
    if video:
        env = gym.wrappers.RecordVideo(env, video, episode_trigger=lambda _: True, disable_logger=True)
    if gif:
        env = gym.wrappers.RenderCollection(env)  # env.render() returns the frames since the last call
    return env


def show_episodes(env: gym.Env, policy, episodes: int, seed: int | None, gif: str | None = None,
                  quiet: bool = False) -> np.ndarray:
    """Play episodes, print each return, write the first one to `gif`; return the returns."""
    import pygame  # comes with gymnasium[classic-control]; only needed to report a missing display

    returns = []
    try:
        for i, ret in enumerate(tqdm(run_episodes(env, policy, episodes, seed), total=episodes,
                                     desc="episodes", leave=False, disable=not quiet)):
            returns.append(ret)
            if not quiet:
                print(f"episode {i + 1}: return {ret:.1f}", flush=True)
            if i == 0 and gif:
                save_gif(env.render(), gif)
    except pygame.error as e:
        fail(f"cannot open a window ({e}); use --video DIR, or set SDL_VIDEODRIVER=dummy")
    env.close()
    return np.array(returns)


def save_gif(frames: list[np.ndarray], path: str, every: int = 2) -> None:
    """Every 2nd frame at half size keeps a 200-step episode's GIF under 100 KB."""
    import imageio.v3 as iio

    small = [f[::2, ::2] for f in frames[::every]]
    fps = 30 / every
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, small, duration=1000 / fps, loop=0)


def play(args: argparse.Namespace) -> None:
    """--model PATH with --view, --eval, --video and/or --gif."""
    model = load_model(args.model, make_env(args.env))  # check it before writing anything
    weights, dueling = numpy_weights(model), dueling_mode(model)
    env = play_env(args.env, args.view, args.video, args.gif)
    episodes = args.episodes or (100 if args.eval else 3)
    policy = functools.partial(greedy_action, weights, dueling=dueling)
    returns = show_episodes(env, policy, episodes, args.seed, args.gif, quiet=args.eval)
    if args.eval:
        threshold = env.spec.reward_threshold
        verdict = "" if threshold is None else f"; solved: {'yes' if returns.mean() >= threshold else 'no'} " \
                                                f"(threshold {threshold})"
        print(f"{args.env}: mean return {returns.mean():.1f} ± {returns.std():.1f} over {episodes} episodes{verdict}")


# -------------------------------------------------------------------------------- main


def prepare_run(args: argparse.Namespace) -> tuple[argparse.Namespace, Path, bool]:
    """New run: create LOGDIR/NAME and record the settings. --resume: reload them."""
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "resume" / "state.json").is_file() or not (run_dir / "args.json").is_file():
            fail(f"{run_dir} has no resume state; pass a run directory written by run.py, e.g. runs/<name>")
        saved = argparse.Namespace(**json.loads((run_dir / "args.json").read_text()))
        done = json.loads((run_dir / "resume" / "state.json").read_text())["step"]
        if done >= saved.steps:
            fail(f"{run_dir} already finished its {saved.steps} steps; start a new run instead")
        return saved, run_dir, True
    make_env(args.env).close()  # fail on a bad env before anything is written
    run_dir = Path(args.logdir) / (args.name or time.strftime("%Y%m%d-%H%M%S"))
    if run_dir.exists():
        fail(f"{run_dir} already exists; choose another --name, or --resume {run_dir}")
    run_dir.mkdir(parents=True)
    (run_dir / "args.json").write_text(json.dumps(vars(args), indent=1))
    return args, run_dir, False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.model:
        play(args)
        return 0
    args, run_dir, resuming = prepare_run(args)
    summary = train(args, run_dir, resuming)
    if summary["status"] == "interrupted":
        print(f"interrupted at step {summary['steps']}; snapshot and logs saved in {run_dir}. "
              f"Continue with: python run.py --resume {run_dir}", file=sys.stderr)
        return 130
    if summary["status"] == "diverged":
        print(f"stopped: the loss became non-finite after step {summary['steps']}; earlier snapshots in "
              f"{run_dir} are kept. Try a lower --lr or --clip-norm.", file=sys.stderr)
        return 1
    if summary["final_eval_mean"] is not None:
        verdict = "" if summary["solved"] is None else f"  solved: {'yes' if summary['solved'] else 'no'}"
        print(f"final eval: {summary['final_eval_mean']:.1f} ± {summary['final_eval_std']:.1f} over "
              f"{summary['final_eval_episodes']} episodes{verdict}")
    print(f"{summary['steps']} steps in {summary['wall_seconds']:.0f} s ({summary['steps_per_second']:.0f} "
          f"steps/s while training); saved in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
