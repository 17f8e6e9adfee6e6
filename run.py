"""Deep Q-learning (DQN) on Gymnasium's MountainCar, with TensorFlow 2 / Keras 3.

Train:     python run.py                              (writes runs/<name>/)
Watch:     python run.py --model runs/<name>/final.keras --view
Evaluate:  python run.py --model runs/<name>/final.keras --eval
Resume:    python run.py --resume runs/<name>
Curves:    tensorboard --logdir runs

The file reads top to bottom in the order the algorithm runs: Q-network, acting, learning
(Bellman targets and the gradient step), evaluation, the training loop with its snapshots and
crash-safe checkpoint, and playing a saved model. The flags are in settings.py, the envs and
the playing of episodes in envs.py.
"""

import argparse
import functools
import json
import math
import resource
import signal
import sys
import time
from pathlib import Path

from startup import load_tensorflow

STARTED = time.time()  # wall-clock start, before the slow TensorFlow import
if __name__ == "__main__":
    # Keras imports pandas whenever it is installed (Ray Tune, used by bench.py, brings it) only
    # to accept DataFrames, which we never pass. Marking it absent saves ~120 MB per training.
    sys.modules.setdefault("pandas", None)
tf = load_tensorflow()  # before Keras, which loads it too: the project's oneDNN default, no noise

import gymnasium as gym
import keras
import numpy as np
import psutil
from keras.src.saving import saving_lib
from tqdm import tqdm

from atomic import remove_leftovers, write_atomically, write_text_atomically
from envs import make_env, play_env, run_episodes, show_episodes
from loggers import TensorBoardLogger
from replay_buffer import NStep, PrioritizedReplayBuffer, ReplayBuffer
from settings import fail, parse_args

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
        st, validation_obs, best_weights = load_checkpoint(run_dir, model, target, replay, rng)
        remove_leftovers(run_dir)  # temporary files of a write that a crash cut short
    fit_batch = make_fit_batch(model, target, args.double, args.tau)
    # Compiled, the hard copy costs ~0.3 ms instead of ~3 ms for target.set_weights(model.get_weights()).
    copy_to_target = tf.function(functools.partial(update_target, target, model))
    n_step = NStep(args.n_step, args.gamma)
    epsilon_schedule = functools.partial(epsilon_at, start=args.epsilon_start, end=args.epsilon_end,
                                         anneal_steps=args.epsilon_steps, schedule=args.epsilon_schedule,
                                         decay=args.epsilon_decay)
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
    if resuming:
        epsilon = epsilon_schedule(step)
        bar.write(f"resuming {run_dir} at step {step}: epsilon {epsilon:.3f}, {len(replay)} transitions in replay")
    while step < args.steps and not stop:
        step += 1
        # act, step the env, store the transition
        epsilon = epsilon_schedule(step)
        action = epsilon_greedy_action(weights, obs, epsilon, rng, n_actions, args.dueling)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        if not math.isfinite(next_obs.sum() + reward):  # one sum: NaN and inf anywhere propagate into it
            status = "bad_env_output"
            break
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
            now = dict(step=step, train_seconds=st["train_seconds"] + time.perf_counter() - t_start,
                       wall_seconds=st["wall_seconds"] + time.time() - STARTED)
            try:
                save_model(model, run_dir / f"step_{step}.keras")
                save_checkpoint(run_dir, model, target, replay, rng, {**st, **now}, validation_obs, best_weights)
            except OSError:  # a full disk: main says so in one line, which must not land on the bar's
                bar.close()
                raise
            bar.write(f"saved step_{step}.keras and the checkpoint at step {step} ({len(replay)} transitions)")
        if step % 100 == 0:
            bar.update(100)
    bar.close()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if stop and status == "finished":
        status = "interrupted"
    st["train_seconds"] += time.perf_counter() - t_start

    final_returns = last_returns = None
    if status in ("diverged", "bad_env_output"):  # keep the last good snapshot: nothing is saved now
        st["step"] = step - 1
    else:
        st["step"] = step
        if status == "interrupted":
            save_model(model, run_dir / f"step_{step}.keras")
        save_checkpoint(run_dir, model, target, replay, rng, st, validation_obs, best_weights)
        if status == "finished":
            save_model(model, run_dir / "last.keras")
            episodes, eval_seed = args.final_eval_episodes, args.seed + 10_000  # same start states for both
            if episodes:
                last_returns = evaluate(eval_env, weights, episodes, eval_seed, args.dueling)
            if best_weights is not None:
                model.set_weights(best_weights)
                weights = best_weights
            save_model(model, run_dir / "final.keras")
            if episodes:
                same = best_weights is None
                final_returns = last_returns if same else evaluate(eval_env, weights, episodes, eval_seed, args.dueling)
                log.scalar("eval/final_mean_return", final_returns.mean(), step)
    summary = write_summary(run_dir, args, st, status, final_returns, last_returns, env.spec.reward_threshold)
    log.close()
    return summary


def save_model(model: keras.Model, path: Path) -> None:
    """A .keras snapshot that --model can load, written atomically (atomic.py)."""
    write_atomically(path, model.save)


# Keras 3.15 stores the attribute skip-sets of its saving code as "saving_attr_skipset_*" but looks
# them up as "saving_attr_skiplist_*", so every save builds new reference layers whose memory is
# never given back (~70 KB a snapshot). Caching the function stops that growth.
saving_lib.get_attr_skipset = functools.cache(saving_lib.get_attr_skipset)


CHECKPOINT = "checkpoint.npz"


def save_checkpoint(run_dir: Path, model, target, replay, rng, st: dict, validation_obs, best_weights) -> None:
    """Everything --resume needs, in one file written atomically (atomic.py), so a crash leaves
    either the previous complete checkpoint or this one: the online weights and Adam's state,
    the target weights, the replay contents, the best weights so far, the counters and the
    random generator's state."""
    arrays = {"state": np.array(json.dumps({**st, "rng": rng.bit_generator.state}))}
    for name, values in [("online", model.get_weights()), ("target", target.get_weights()),
                         ("adam", [v.numpy() for v in optimizer_variables(model)]), ("best", best_weights or [])]:
        arrays.update({f"{name}/{i}": v for i, v in enumerate(values)})
    arrays.update({f"replay/{k}": v for k, v in replay.arrays().items()})
    if validation_obs is not None:
        arrays["validation_obs"] = validation_obs
    write_atomically(run_dir / CHECKPOINT, lambda tmp: np.savez(tmp, **arrays))


def optimizer_variables(model: keras.Model) -> list:
    """Adam's step count and moments. Keras creates the moments at the first update, so a
    checkpoint taken before learning starts builds them first (as zeros, as the update would)."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return model.optimizer.variables


def load_checkpoint(run_dir: Path, model, target, replay, rng) -> tuple[dict, np.ndarray | None, list | None]:
    """Inverse of save_checkpoint, into freshly built networks and replay; returns the counters,
    the validation states and the best weights. Any problem with the file is a one-line error."""
    path = run_dir / CHECKPOINT
    try:
        with np.load(path) as saved:
            def listed(name: str) -> list[np.ndarray]:
                return [saved[f"{name}/{i}"] for i in range(sum(k.startswith(name + "/") for k in saved.files))]

            st = json.loads(str(saved["state"]))
            rng.bit_generator.state = st.pop("rng")
            model.set_weights(listed("online"))
            target.set_weights(listed("target"))
            adam, variables = listed("adam"), optimizer_variables(model)
            if len(adam) != len(variables):
                raise ValueError(f"{len(adam)} optimizer arrays for {len(variables)} variables")
            for variable, value in zip(variables, adam, strict=True):
                variable.assign(value)
            replay.restore({k.removeprefix("replay/"): saved[k] for k in saved.files if k.startswith("replay/")})
            validation_obs = saved["validation_obs"] if "validation_obs" in saved.files else None
            return st, validation_obs, listed("best") or None
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, or another run's: one answer
        fail(f"{path} cannot be resumed ({type(e).__name__}: {e}); start a new run, or play its "
             f"snapshots with --model {run_dir}/step_N.keras")


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
    write_text_atomically(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


# ------------------------------------------------------------------------ saved models


def play(args: argparse.Namespace) -> None:
    """--model PATH with --view, --eval, --video and/or --gif."""
    model = load_model(args.model, make_env(args.env))  # check it before writing anything
    weights, dueling = numpy_weights(model), dueling_mode(model)
    env = play_env(args.env, args.view, args.video, args.gif)
    episodes = args.episodes or (100 if args.eval else 3)
    policy = functools.partial(greedy_action, weights, dueling=dueling)
    returns = show_episodes(env, policy, episodes, args.seed, args.gif, quiet=args.eval)
    if args.eval and len(returns):
        threshold = env.spec.reward_threshold
        verdict = "" if threshold is None else f"; solved: {'yes' if returns.mean() >= threshold else 'no'} " \
                                                f"(threshold {threshold})"
        print(f"{args.env}: mean return {returns.mean():.1f} ± {returns.std():.1f} over {len(returns)} "
              f"episodes{verdict}")


# -------------------------------------------------------------------------------- main


def prepare_run(args: argparse.Namespace) -> tuple[argparse.Namespace, Path, bool]:
    """New run: create LOGDIR/NAME and record the settings. --resume: reload them."""
    if args.resume:
        return resumable_run(Path(args.resume)), Path(args.resume), True
    make_env(args.env).close()  # fail on a bad env before anything is written
    run_dir = Path(args.logdir) / (args.name or time.strftime("%Y%m%d-%H%M%S"))
    if run_dir.exists():
        fail(f"{run_dir} already exists; choose another --name, or --resume {run_dir}")
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:  # a read-only folder, a --logdir that is a file, ...
        fail(f"cannot create {run_dir} ({e.strerror}); pass a writable folder with --logdir")
    try:
        write_text_atomically(run_dir / "args.json", json.dumps(vars(args), indent=1))
    except OSError as e:  # the disk is full: leave nothing behind
        run_dir.rmdir()
        fail(f"cannot write to {run_dir} ({e.strerror}); free some space or pass another --logdir")
    return args, run_dir, False


def resumable_run(run_dir: Path) -> argparse.Namespace:
    """The saved settings of a run that --resume can continue, or a one-line error saying why not."""
    if not (run_dir / CHECKPOINT).is_file():
        if (run_dir / "resume" / "state.json").is_file():
            fail(f"{run_dir} was written by an older run.py (a resume/ folder, not {CHECKPOINT}) and cannot be "
                 "resumed; start a new run, or play its snapshots with --model")
        if (run_dir / "args.json").is_file():
            fail(f"{run_dir} has no complete checkpoint yet (it stopped before its first snapshot); "
                 "start it again as a new run")
        fail(f"{run_dir} has no resume state; pass a run directory written by run.py, e.g. runs/<name>")
    try:
        saved = argparse.Namespace(**json.loads((run_dir / "args.json").read_text()))
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    except (OSError, ValueError, TypeError) as e:
        fail(f"{run_dir}'s args.json or summary.json is not readable ({e}); start a new run")
    if summary.get("status") == "finished":
        fail(f"{run_dir} already finished its {saved.steps} steps; start a new run instead")
    return saved


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.model:
        play(args)
        return 0
    args, run_dir, resuming = prepare_run(args)
    try:
        summary = train(args, run_dir, resuming)
    except OSError as e:  # a full disk or a folder gone read-only: every file written so far is complete
        fail(f"writing to {run_dir} failed ({e.strerror or e}); its last complete checkpoint is kept: "
             f"free some space, then continue with python run.py --resume {run_dir}")
    if summary["status"] == "interrupted":
        print(f"interrupted at step {summary['steps']}; snapshot and logs saved in {run_dir}. "
              f"Continue with: python run.py --resume {run_dir}", file=sys.stderr)
        return 130
    if summary["status"] == "diverged":
        print(f"stopped: the loss became non-finite after step {summary['steps']}; earlier snapshots in "
              f"{run_dir} are kept. Try a lower --lr or --clip-norm.", file=sys.stderr)
        return 1
    if summary["status"] == "bad_env_output":
        print(f"stopped: {args.env} returned a non-finite observation or reward at step {summary['steps'] + 1}; "
              f"earlier snapshots in {run_dir} are kept. Check the env.", file=sys.stderr)
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
