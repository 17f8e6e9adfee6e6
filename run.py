"""Deep Q-learning (DQN) with TensorFlow 2 / Keras 3 on Gymnasium: classic control, or Atari from pixels.
Train: python run.py [--env ID]; watch: python run.py --model runs/<name>/final.keras --view (or --eval);
resume: python run.py --resume runs/<name>. Read top to bottom, in the order of the README's "DQN in one
page". The replay is in replay_buffer.py (frame_replay.py for Atari), the curves in loggers.py; what is
not DQN (the run's folder, crash-safe files, the checkpoint, Ctrl-C, the envs) is in plumbing/.
"""

import argparse
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from plumbing.bookkeeping import CtrlC, Progress, Stopwatch, crossed, record_evaluation, train_and_report
from plumbing.settings import parse_args
from plumbing.startup import load_tensorflow, prepare_for, use_threads

if __name__ == "__main__":
    prepare_for(parse_args())  # bad flags fail in one line now, before TensorFlow's seconds of loading
tf = load_tensorflow()

import keras
import numpy as np
from tqdm import tqdm

from frame_replay import FrameReplayBuffer, PrioritizedFrameReplayBuffer
from loggers import Averages, TensorBoardLogger, log_episodes, log_training, weight_distance
from plumbing import dqn_files, serving
from plumbing.envs import (AtariGames, finite, make_env, make_eval_env, make_training_envs, play_env, play_saved,
                           run_episodes, run_games)
from plumbing.keras_files import load_model
from replay_buffer import Batch, PrioritizedReplayBuffer, ReplayBuffer, StepWriter, store
import value_map

# ------------------------------------------------------------------------ hyperparameters
# `args`: every flag with its help text and the presets per env, in plumbing/settings.py (`--help`).

# ------------------------------------------------------------------------------ Q-network
@keras.saving.register_keras_serializable(package="dqn")
class Dueling(keras.layers.Layer):
    """Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a') (or max; Wang et al. 2016). Subtracting it makes V
    and A identifiable: else any constant could move between them. The paper found mean more stable."""

    def __init__(self, mode: str = "avg", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs):
        value, advantage = inputs
        reduce = keras.ops.mean if self.mode == "avg" else keras.ops.max
        return value + advantage - reduce(advantage, axis=1, keepdims=True)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


def dense_torso(obs, units: int, prefix: str = "hidden", activation: str = "relu"):
    """Two hidden layers, for observations that are a few numbers (classic control, Box2D)."""
    h = keras.layers.Dense(units, activation=activation, name=f"{prefix}_0")(obs)
    return keras.layers.Dense(units, activation=activation, name=f"{prefix}_1")(h)


def conv_torso(frames):
    """The Nature DQN torso (Mnih et al. 2015) for stacks of 84x84 uint8 frames, oldest first.
    The frames stay uint8 in the replay (4x smaller than float32) and are scaled to [0, 1] here."""
    h = keras.layers.Permute((2, 3, 1), name="channels_last")(frames)  # (stack, 84, 84) -> (84, 84, stack)
    h = keras.layers.Rescaling(1 / 255, name="scale")(h)
    for i, (filters, size, stride) in enumerate([(32, 8, 4), (64, 4, 2), (64, 3, 1)]):
        h = keras.layers.Conv2D(filters, size, stride, activation="relu", name=f"conv_{i}")(h)
    return keras.layers.Dense(512, activation="relu", name="features")(keras.layers.Flatten(name="flatten")(h))


def create_model(obs_shape: int | tuple[int, ...], n_actions: int, units: int, lr, clip_norm: float,
                 loss: str = "mse", dueling: str = "none") -> keras.Model:
    """Q(s, .) for all actions, multiplied by an action mask: all ones gives every action's Q-value
    (for acting and the target), one-hot only the taken action's (for the loss). A stack of frames
    gets the conv torso, a few numbers the dense one; `dueling` splits the head in two."""
    obs_shape = (obs_shape,) if isinstance(obs_shape, int) else tuple(obs_shape)
    frames = len(obs_shape) == 3
    obs = keras.Input(obs_shape, dtype="uint8" if frames else "float32", name="obs")
    mask = keras.Input((n_actions,), name="action_mask")
    h = conv_torso(obs) if frames else dense_torso(obs, units)
    if dueling == "none":
        q = keras.layers.Dense(n_actions, name="q")(h)
    else:
        value, advantage = keras.layers.Dense(1, name="value")(h), keras.layers.Dense(n_actions, name="advantage")(h)
        q = Dueling(dueling, name="dueling")([value, advantage])
    model = keras.Model([obs, mask], keras.layers.Multiply(name="masked_q")([q, mask]))
    # A loss object, not the string "mse": .h5 files of models compiled with "mse" do not load back.
    model.compile(optimizer=keras.optimizers.Adam(lr, global_clipnorm=clip_norm),
                  loss=keras.losses.Huber() if loss == "huber" else keras.losses.MeanSquaredError())
    return model


# --------------------------------------------------------------------------------- acting
def epsilon_at(step: int, args: argparse.Namespace) -> float:
    """Exploration at this env step: linear from --epsilon-start to --epsilon-end over --epsilon-steps,
    then constant; or (--epsilon-schedule exponential) start * decay**step, never below the end."""
    start, end = args.epsilon_start, args.epsilon_end
    if args.epsilon_schedule == "exponential":
        return max(end, start * args.epsilon_decay**step)
    return end if args.epsilon_steps == 0 else start + (end - start) * min(step / args.epsilon_steps, 1.0)


class QValues:
    """Q(s, .) of a batch of observations, `q_values(obs)`, for acting at every env step (where a Keras call
    costs more than a classic env's step): numpy on a copy of a dense net's weights, else one compiled call."""

    def __init__(self, model: keras.Model):
        self.model, self.n_actions = model, int(model.output_shape[-1])
        names = {layer.name for layer in model.layers}
        self.dueling = model.get_layer("dueling").mode if "dueling" in names else "none"
        self.layers = ["hidden_0", "hidden_1", *(["q"] if self.dueling == "none" else ["value", "advantage"])]
        self.in_numpy = set(self.layers) <= names  # the layers create_model names (older snapshots' are not)
        self.compiled = tf.function(lambda obs: model([obs, tf.ones((tf.shape(obs)[0], self.n_actions))]),
                                    reduce_retracing=True)  # with the all-ones mask
        self.refresh()

    def refresh(self, values: list | None = None) -> None:
        """Copy the weights (or these values of them, as the update returns them) for acting."""
        if self.in_numpy:
            self.weights = dense_weights(self.model, self.layers, values)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if not self.in_numpy:
            return self.compiled(tf.convert_to_tensor(obs, self.model.inputs[0].dtype)).numpy()
        (k0, b0), (k1, b1), *heads = self.weights
        h = np.maximum(np.maximum(obs @ k0 + b0, 0.0) @ k1 + b1, 0.0)  # the two ReLU layers
        heads = [h @ kernel + bias for kernel, bias in heads]
        if self.dueling == "none":
            return heads[0]
        (value, advantage), reduce = heads, np.mean if self.dueling == "avg" else np.max
        return value + advantage - reduce(advantage, axis=1, keepdims=True)


def dense_weights(model: keras.Model, names: list[str], values: list | None = None) -> list[tuple]:
    """(kernel, bias) of each named Dense layer in numpy, from the model's variables or these values of them."""
    values = model.trainable_variables if values is None else values
    w = {v.path: np.asarray(value) for v, value in zip(model.trainable_variables, values, strict=True)}
    return [(w[f"{name}/kernel"], w[f"{name}/bias"]) for name in names]


def greedy_actions(q_values: QValues, obs: np.ndarray) -> np.ndarray:
    """argmax_a Q(s, a) for each row of a batch of observations."""
    return np.argmax(q_values(obs), axis=1)


def epsilon_greedy(q_values: QValues, obs: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """One action per env: random with probability epsilon, else greedy (one forward pass for all envs)."""
    explore = rng.random(len(obs)) < epsilon
    explorers = np.count_nonzero(explore)
    if explorers == len(obs):
        return rng.integers(q_values.n_actions, size=explorers)
    actions = greedy_actions(q_values, obs)
    if explorers:
        actions[explore] = rng.integers(q_values.n_actions, size=explorers)
    return actions


# ------------------------------------------------------------------------------- learning
def bellman_targets(target_model: keras.Model, reward, next_obs, terminated, discount,
                    online_model: keras.Model | None = None):
    """y = r + discount * max_a' Q_target(s', a'), with discount gamma**k for a k-step return. A true
    termination stops the bootstrap; a time-limit truncation does not (the car could have kept driving).
    The periodically copied target network keeps y from chasing the weights being updated (Mnih et al.
    2015). Double DQN (`online_model`, van Hasselt et al. 2016): Q_target(s', argmax_a' Q_online(s', a'))."""
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


def make_update(model: keras.Model, target_model: keras.Model, double: bool = False, tau: float | None = None):
    """Compile DQN's update: G gradient steps on G minibatches (a Batch of shape (G, batch, ...)) in one call,
    removing the per-call cost that dominates a small network; returns the mean loss, |TD errors|, new weights.
    All G targets come from the networks at the call's start (with --tau or --double they lag < G steps)."""
    n_actions = model.output_shape[-1]
    # XLA fuses the dense network's many small ops, but slows the conv net's convolutions down (docs/atari.md).
    @tf.function(jit_compile=len(model.inputs[0].shape) == 2)
    def update(batch: Batch):
        g, b = tf.shape(batch.reward)[0], tf.shape(batch.reward)[1]

        def flat(x):  # (G, batch, ...) -> (G * batch, ...)
            return tf.reshape(x, tf.concat([[g * b], tf.shape(x)[2:]], 0))
        y = bellman_targets(target_model, flat(batch.reward), flat(batch.next_obs), flat(batch.terminated),
                            flat(batch.discount), model if double else None)
        y = tf.reshape(y, (g, b))
        total, td_errors = 0.0, tf.TensorArray(tf.float32, size=g)
        for i in tf.range(g):
            mask = tf.one_hot(batch.action[i], n_actions)
            with tf.GradientTape() as tape:
                # The one-hot mask zeroes every other action, so the sum is the taken action's Q-value:
                # the loss is the mean over the minibatch of (y - Q(s, a))^2 (or its Huber form).
                q_taken = tf.reduce_sum(model([batch.obs[i], mask], training=True), axis=1)
                # --prioritized: each transition's loss is scaled by its importance weight.
                weight = None if batch.weight is None else batch.weight[i]
                loss = model.loss(y[i][:, None], q_taken[:, None], sample_weight=weight)
            td_errors = td_errors.write(i, tf.abs(y[i] - q_taken))
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            if tau is not None:
                update_target(target_model, model, tau)
            total += loss
        return total / tf.cast(g, tf.float32), td_errors.stack(), [tf.identity(v) for v in model.trainable_variables]

    return update


# ---------------------------------------------------------------------- the run's state
@dataclass
class TrainingState:
    """Everything a run has learned so far; the checkpoint saves exactly this and --resume loads it."""
    model: keras.Model  # the online Q-network, with its optimizer
    target: keras.Model
    replay: ReplayBuffer
    rng: np.random.Generator  # exploration and replay sampling
    progress: Progress
    validation_obs: np.ndarray | None = None  # fixed states for the average-max-Q curve, drawn when learning starts
    best_weights: list | None = None  # the weights of the best periodic evaluation so far (--keep-best)


def new_state(args: argparse.Namespace, envs) -> TrainingState:
    """Fresh networks (the target a copy of the online one), an empty replay, counters at 0."""
    obs_shape, n_actions = tuple(envs.single_observation_space.shape), int(envs.single_action_space.n)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    # Linear learning-rate decay; the schedule counts gradient steps, not env steps.
    updates = (args.steps - args.learning_starts) // args.train_freq * args.gradient_steps
    lr = keras.optimizers.schedules.PolynomialDecay(args.lr, max(updates, 1), args.lr_end)
    model, target = (create_model(obs_shape, n_actions, args.units, lr, args.clip_norm, args.loss, args.dueling)
                     for _ in range(2))
    target.set_weights(model.get_weights())
    if len(obs_shape) == 3:  # stacks of frames: each frame stored once
        frames = (args.buffer_size, envs.num_envs, obs_shape[1:], obs_shape[0], args.n_step, args.gamma)
        replay = (PrioritizedFrameReplayBuffer(*frames, args.per_alpha, args.per_eps) if args.prioritized
                  else FrameReplayBuffer(*frames))
    else:
        replay = (PrioritizedReplayBuffer(args.buffer_size, obs_shape, args.per_alpha, args.per_eps)
                  if args.prioritized else ReplayBuffer(args.buffer_size, obs_shape))
    return TrainingState(model, target, replay, rng, Progress())


# -------------------------------------------------------------------------- training loop
def train(args: argparse.Namespace, run_dir: Path, resuming: bool) -> dict:
    """Train a DQN agent, writing logs, snapshots and summary.json to run_dir; return the summary."""
    use_threads(tf, args.threads)  # here, not in main: a --resume runs with its saved settings
    eval_env = make_eval_env(args.env, args.eval_episodes, args.threads)
    envs = make_training_envs(args.env, args.num_envs, args.threads)
    state = new_state(args, envs)
    dqn_files.print_replay(args, state.replay)
    if resuming:
        dqn_files.resume(run_dir, state, lambda step: epsilon_at(step, args))
    log = TensorBoardLogger(run_dir, settings=None if resuming else vars(args))
    obs, _ = envs.reset(seed=int(state.rng.integers(2**31)) if resuming else args.seed)
    eval_env.reset(seed=int(state.rng.integers(2**31)))  # seeds the evaluation episodes' start states too
    status = training_loop(args, state, envs, obs, eval_env, run_dir, log)
    envs.close()  # then last.keras, final.keras (the best evaluated weights), their evaluations, summary.json:
    return dqn_files.finish(args, state, status, run_dir, log, eval_env,
                            lambda seed: evaluate(eval_env, QValues(state.model), args.final_eval_episodes, seed))


def training_loop(args: argparse.Namespace, state: TrainingState, envs, obs: np.ndarray, eval_env,
                  run_dir: Path, log: TensorBoardLogger) -> str:
    """Act, store, learn, copy to the target; log, evaluate, snapshot; until the last step or Ctrl-C. Each
    pass steps every env once and does each periodic task as often as the step passed a multiple of its period."""
    p, replay, rng, q_values = state.progress, state.replay, state.rng, QValues(state.model)
    update = make_update(state.model, state.target, args.double, args.tau)
    copy_to_target = tf.function(functools.partial(update_target, state.target, state.model))  # one call in all
    writer = replay if isinstance(replay, FrameReplayBuffer) else StepWriter(replay, envs.num_envs, args.n_step,
                                                                              args.gamma)
    for env in range(envs.num_envs):
        writer.start(env, obs[env])
    clock, averages, last_return = Stopwatch(p.train_seconds), Averages(p.step), float("nan")
    with CtrlC() as ctrl_c, tqdm(total=args.steps, initial=p.step, desc="train", unit="step", smoothing=0.05,
                                 mininterval=1, disable=None) as bar:  # no bar where stderr is not a terminal
        try:
            while p.step < args.steps and not ctrl_c.pressed:
                before, step = p.step, p.step + envs.num_envs
                # act, step the envs, store the transitions
                epsilon = epsilon_at(step, args)
                actions = epsilon_greedy(q_values, obs, epsilon, rng)
                obs, rewards, terminated, truncated, info = envs.step(actions)
                if not finite(obs, rewards, info):
                    return "bad_env_output"  # the step is not counted: the last snapshot is the last good state
                p.step = step
                actions = info.get("actions", actions)  # Atari games press FIRE for the agent after a lost life
                store(writer, actions, np.sign(rewards) if args.clip_rewards else rewards, obs, terminated,
                      truncated, info)
                if "episode" in info:  # whole games ended: their raw scores
                    returns = log_episodes(log, info, step)
                    p.episode, last_return = p.episode + len(returns), returns[-1]

                # sample minibatches, compute Bellman targets, take gradient steps; copy to the target
                for _ in range(crossed(before, step, args.train_freq) if step >= args.learning_starts else 0):
                    new_weights = learn(args, state, update, averages)
                    if new_weights is None:
                        p.step = before
                        return "diverged"
                    q_values.refresh(new_weights)
                for _ in range(crossed(before, step, args.target_update) if args.tau is None else 0):
                    copy_to_target()

                # log, evaluate, snapshot
                if crossed(before, step, args.log_every):
                    log_progress(args, state, log, averages, epsilon, last_return, bar)
                if args.eval_every and crossed(before, step, args.eval_every):
                    evaluate_periodically(args, state, q_values, eval_env, log, clock)
                if crossed(before, step, args.snapshot_every):
                    dqn_files.snapshot(run_dir, state, clock, bar)
                if hundreds := crossed(before, step, 100):
                    bar.update(100 * hundreds)
        finally:
            p.train_seconds = clock()
    return "interrupted" if ctrl_c.pressed else "finished"


def learn(args: argparse.Namespace, state: TrainingState, update: Callable, averages: Averages) -> list | None:
    """Sample G minibatches, take G gradient steps in one call; the new weights, or None if the loss is not finite."""
    replay, rng, step = state.replay, state.rng, state.progress.step
    if state.validation_obs is None:
        state.validation_obs = replay.sample(rng, min(1000, len(replay))).obs
    shape = (args.gradient_steps, args.batch_size)
    if args.prioritized:  # beta rises to 1 (full bias correction) as training ends and the policy settles
        batch = replay.sample(rng, shape, beta=args.per_beta + (1 - args.per_beta) * step / args.steps)
        averages.add(is_weight=float(batch.weight.mean()))
    else:
        batch = replay.sample(rng, shape)
    started, first_call = time.perf_counter(), update.experimental_get_tracing_count() == 0
    loss, td_error, new_weights = update(batch._replace(index=None))
    if first_call:  # it traced (and for a dense net XLA-compiled) the update: reported apart from training speed
        state.progress.compile_seconds += time.perf_counter() - started
    loss = float(loss)
    if not np.isfinite(loss):
        return None
    td_error = td_error.numpy()
    if args.prioritized:
        replay.update_priorities(batch.index, td_error)
    averages.add(loss=loss, td_error=float(td_error.mean()))
    return new_weights


def log_progress(args: argparse.Namespace, state: TrainingState, log: TensorBoardLogger, averages: Averages,
                 epsilon: float, last_return: float, bar: tqdm) -> None:
    """DQN's training curves, averaged since the last log line (docs/algorithm.md lists every tag)."""
    log_training(log, bar, state.progress, averages, last_return, {
        "train/epsilon": epsilon, "train/target_distance": weight_distance(state.model, state.target),
        "train/tau": float("nan") if args.tau is None else args.tau})


# ----------------------------------------------------------------------------- evaluation
def evaluate(env, q_values: QValues, episodes: int, seed: int | None = None) -> np.ndarray:
    """Greedy returns of whole episodes on the evaluation env: one after another, or Atari games at once."""
    if isinstance(env, AtariGames):
        returns = run_games(env, functools.partial(greedy_actions, q_values), episodes, seed)
    else:
        returns = run_episodes(env, lambda obs: int(greedy_actions(q_values, obs[None])[0]), episodes, seed)
    return np.array(list(tqdm(returns, total=episodes, desc="eval", leave=False, disable=None)))


def evaluate_periodically(args: argparse.Namespace, state: TrainingState, q_values: QValues, eval_env,
                          log: TensorBoardLogger, clock: Stopwatch) -> None:
    """Log the greedy policy's mean return; note when it first solves the env and keep its best weights."""
    p = state.progress
    mean = float(evaluate(eval_env, q_values, args.eval_episodes).mean())
    log.scalar("eval/mean_return", mean, p.step)
    if state.validation_obs is not None:  # mean over fixed states of max_a Q(s, a): a smooth signal of progress
        log.scalar("eval/avg_max_q", float(q_values(state.validation_obs).max(axis=1).mean()), p.step)
    if record_evaluation(p, mean, eval_env.spec.reward_threshold, clock(), args.keep_best):
        state.best_weights = state.model.get_weights()


# --------------------------------------------------------------------- playing a saved model
def play(args: argparse.Namespace) -> int:
    """--model PATH with --view, --eval, --video and/or --gif: the greedy action at every step;
    --plot: a picture of what it learned (value_map.py); --export: files to serve it (plumbing/serving.py)."""
    use_threads(tf, args.threads)
    env = make_env(args.env)
    if args.plot:
        value_map.check_drawable(env)
    if args.export:
        serving.check_export_dir(args.export)
    model = load_model(args.model, env)  # checked before anything is written
    q_values = QValues(model)
    if args.plot:
        value_map.draw(args.plot, env, q_values, args.seed)
        print(f"wrote {args.plot}")
    if args.export:
        print("wrote", *serving.export(model, args.env, args.export))
    if args.view or args.eval or args.video or args.gif:
        play_saved(args, play_env(args.env, args.view, args.video, args.gif, args.gif_steps),
                   lambda obs: int(greedy_actions(q_values, obs[None])[0]))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return play(args) if args.model else train_and_report(args, "dqn", train)


if __name__ == "__main__":
    sys.exit(main())
