"""Policy gradients with a learned baseline: what REINFORCE (reinforce.py) and A2C (a2c.py) share.

Both learn a policy pi(a|s) (the network's logits) and a baseline V(s) (its value head) from
batches of their own latest experience: states, the actions taken, and the discounted return R
that followed each. The loss of a batch is

    -mean(log pi(a|s) * A)  +  value_coef * mean((R - V(s))^2)  -  entropy_coef * mean(H(pi(.|s)))

with the advantage A = R - V(s). Its gradient makes actions that did better than expected more
probable and worse ones less (Williams 1992); subtracting V(s) leaves that gradient's expectation
unchanged and removes much of its variance. The entropy H rewards a policy for staying unsure.
The two scripts differ only in the experience: REINFORCE plays whole episodes and uses their
returns-to-go, A2C steps several envs a few steps and bootstraps R from V (less variance, some bias).

Both standardize observations and scale rewards with running statistics, and use tanh units:
A2C needed them to learn Acrobot (docs/results.md has the runs).

This file: the returns, the normalisations, the network, the loss and its compiled update, then
the run around them (its state and checkpoint, the training loop, evaluation, the end, playing a
snapshot). It imports nothing of DQN's.
"""

import argparse
import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from plumbing.startup import load_tensorflow, use_threads

tf = load_tensorflow()  # before Keras, which loads it too: the project's oneDNN default, no noise

import gymnasium as gym
import keras
import numpy as np
from tqdm import tqdm

from loggers import Averages, TensorBoardLogger, shown
from plumbing import bookkeeping
from plumbing.atomic import remove_leftovers
from plumbing.envs import evaluate_episodes, make_env, play_env, play_saved
from plumbing.keras_files import load_model, optimizer_variables, restore_optimizer, save_model
from plumbing.settings import ALGORITHMS, fail, final_eval_seed, is_atari, parse_args

# ------------------------------------------------------------------------------ returns


def discounted_returns(rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, next_values: np.ndarray,
                       gamma: float) -> np.ndarray:
    """R_t = r_t + gamma * R_t+1 within an episode, for arrays of shape (steps, envs) in time order.

    Where an episode ends, what follows depends on how: after `terminated` nothing (R_t = r_t);
    after `truncated` (a time limit) the episode would have gone on, so R_t = r_t + gamma * V(s_t+1),
    with V of the state it was cut in from `next_values`. So does the last step of a batch
    that stops mid-episode (A2C's n-step returns). Only those entries of next_values are read.
    """
    returns = np.zeros(rewards.shape, np.float32)
    later = next_values[-1]
    for t in reversed(range(len(rewards))):
        later = np.where(truncated[t], next_values[t], later)
        later = rewards[t] + gamma * np.where(terminated[t], 0.0, later)
        returns[t] = later
    return returns


# ------------------------------------------------------------------------- normalisation
# A network learns best from inputs and targets near unit size. Acrobot's observations are not
# (its angular velocities span +-4pi and +-9pi), nor are returns (Acrobot pays -1 a step, for up
# to 500 steps). Like OpenAI Baselines' and SB3's A2C (VecNormalize), the agents standardize both
# with running statistics (--normalize-observations, --scale-rewards).

CLIP = 10.0  # a standardized observation or a scaled reward is clipped to +-CLIP: no outlier swamps a step
EPS = 1e-8  # keeps the divisions finite while a variance is still 0


@dataclass
class RunningMeanStd:
    """The mean and variance of every row seen so far, updated a batch at a time, in float32 (the
    network's precision, so a snapshot holds them exactly)."""
    mean: np.ndarray
    var: np.ndarray
    count: np.ndarray

    @classmethod
    def start(cls, shape: tuple = ()) -> "RunningMeanStd":
        """Nothing seen yet: a tiny count, so that the first batch sets the moments almost alone."""
        return cls(np.zeros(shape, np.float32), np.ones(shape, np.float32), np.float32(1e-4))

    def update(self, batch: np.ndarray) -> None:
        """Merge a batch's moments into these (Chan et al.'s formula for two sets' combined variance)."""
        batch = np.asarray(batch, np.float32)
        n = np.float32(len(batch))
        batch_mean = batch.sum(axis=0) / n  # sums, not np.mean and np.var: cheaper, and this runs every step
        batch_var = np.square(batch - batch_mean).sum(axis=0) / n
        delta, total = batch_mean - self.mean, self.count + n
        self.mean = self.mean + delta * (n / total)
        self.var = (self.var * self.count + batch_var * n + np.square(delta) * (self.count * n / total)) / total
        self.count = total

    def arrays(self) -> list[np.ndarray]:
        return [self.mean, self.var, np.asarray(self.count)]


def standardized(obs: np.ndarray, stats: RunningMeanStd) -> np.ndarray:
    """(obs - mean) / std, clipped: what the network's Standardize layer computes, in numpy."""
    return np.clip((obs - stats.mean) / np.sqrt(stats.var + EPS), -CLIP, CLIP).astype(np.float32)


class RewardScale:
    """Rewards divided by the running std of the discounted return, per env stepped side by side:
    the critic's targets stay near unit size, whatever an env pays. Not shifted by a mean: that
    would change which episodes are better to prolong."""

    def __init__(self, stats: RunningMeanStd | None, gamma: float, num_envs: int):
        self.stats, self.gamma, self.returns = stats, gamma, np.zeros(num_envs, np.float32)

    def __call__(self, rewards: np.ndarray, ended: np.ndarray) -> np.ndarray:
        """One step's rewards of each env, scaled (unchanged without stats); `ended`: the envs whose
        episode ended at this step, whose discounted return starts again from 0."""
        if self.stats is None:
            return rewards
        self.returns = self.returns * self.gamma + rewards
        self.stats.update(self.returns)
        self.returns[ended] = 0.0
        return np.clip(rewards / np.sqrt(self.stats.var + EPS), -CLIP, CLIP)


class Experience(NamedTuple):
    """The latest experience to learn from, flat over time and envs: what REINFORCE's episodes and
    A2C's rollouts give (DQN's replay samples a Batch of transitions instead)."""
    obs: np.ndarray  # (n, obs_size) float32
    actions: np.ndarray  # (n,) int32
    returns: np.ndarray  # (n,) float32: discounted_returns
    episode_returns: list[float]  # the undiscounted returns of the episodes that ended in it


# --------------------------------------------------------------------------- network


@keras.saving.register_keras_serializable(package="policy_gradient")
class Standardize(keras.layers.Layer):
    """The network's first layer with --normalize-observations: standardized(obs) with the running
    statistics of training's observations. They are weights no gradient moves (set from numpy
    before each update), so every snapshot sees its inputs as it did in training."""

    def build(self, input_shape):
        size = input_shape[1:]
        self.mean = self.add_weight(shape=size, initializer="zeros", trainable=False, name="mean")
        self.var = self.add_weight(shape=size, initializer="ones", trainable=False, name="var")
        self.count = self.add_weight(shape=(), initializer=keras.initializers.Constant(1e-4), trainable=False,
                                     name="count")

    def call(self, obs):
        return keras.ops.clip((obs - self.mean) / keras.ops.sqrt(self.var + EPS), -CLIP, CLIP)


def dense_torso(obs, units: int, prefix: str = "hidden", activation: str = "relu"):
    """Two hidden layers, as DQN's Q-network has for the same envs."""
    h = keras.layers.Dense(units, activation=activation, name=f"{prefix}_0")(obs)
    return keras.layers.Dense(units, activation=activation, name=f"{prefix}_1")(h)


def create_actor_critic(obs_size: int, n_actions: int, units: int, shared: bool, lr: float, clip_norm: float,
                        activation: str = "relu", standardize: bool = False) -> keras.Model:
    """The policy pi(.|s) as logits, and the baseline V(s).

    With `shared` one torso feeds both heads (fewer weights, but the value loss then shapes the
    policy's features too); otherwise the critic has its own (critic_0, critic_1). The logits
    start near 0, so the first policy is close to uniform: every action gets tried.
    """
    obs = keras.Input((obs_size,), name="obs")
    x = Standardize(name="standardize")(obs) if standardize else obs
    h = dense_torso(x, units, activation=activation)
    logits = keras.layers.Dense(n_actions, kernel_initializer=keras.initializers.Orthogonal(0.01), name="logits")(h)
    value = keras.layers.Dense(1, name="value")(h if shared else dense_torso(x, units, "critic", activation))
    model = keras.Model(obs, [logits, value])
    model.compile(optimizer=keras.optimizers.Adam(lr, global_clipnorm=clip_norm))
    return model


ACTIVATIONS = {"relu": lambda h: np.maximum(h, 0.0), "tanh": np.tanh}


def dense_weights(model: keras.Model, names: list[str], values: list | None = None) -> list[tuple]:
    """(kernel, bias) of each named Dense layer in numpy, from the model's variables or these values of them."""
    values = model.trainable_variables if values is None else values
    w = {v.path: np.asarray(value) for v, value in zip(model.trainable_variables, values, strict=True)}
    return [(w[f"{name}/kernel"], w[f"{name}/bias"]) for name in names]


def dense_layers(layers: list[tuple], h: np.ndarray, activation: Callable) -> np.ndarray:
    """Dense layers (dense_weights) in numpy, one after the other, `activation` after each but the last."""
    for i, (kernel, bias) in enumerate(layers):
        h = h @ kernel + bias
        if i < len(layers) - 1:
            h = activation(h)
    return h


class ActorCritic:
    """Sampled and greedy actions, and values, from an actor-critic network, in numpy on a copy of
    its weights (refreshed after each update), with the layers found by name: acting calls it at
    every env step, where a Keras call would cost more than the step. With a Standardize layer it
    also keeps the running observation statistics, which acting reads and training updates."""

    def __init__(self, model: keras.Model):
        self.model = model
        names = {layer.name for layer in model.layers}
        self.actor_layers = ["hidden_0", "hidden_1", "logits"]
        self.critic_layers = [*(["critic_0", "critic_1"] if "critic_0" in names else ["hidden_0", "hidden_1"]), "value"]
        self.activation = ACTIVATIONS[model.get_layer("hidden_0").get_config()["activation"]]
        self.standardize = model.get_layer("standardize") if "standardize" in names else None
        self.obs_stats: RunningMeanStd | None = None
        self.refresh()

    def refresh(self, values: list | None = None) -> None:
        """Copy the trained weights from an update's `values`, or everything (the statistics too) from the model."""
        self.actor = dense_weights(self.model, self.actor_layers, values)
        self.critic = dense_weights(self.model, self.critic_layers, values)
        if values is None and self.standardize:
            self.obs_stats = RunningMeanStd(*self.standardize.get_weights())

    def observe(self, obs: np.ndarray) -> None:
        """Count a batch of training's observations into the statistics (if the network standardizes)."""
        if self.obs_stats is not None:
            self.obs_stats.update(obs)

    def store_statistics(self) -> None:
        """Put the statistics into the network, for its update and for snapshots."""
        if self.obs_stats is not None:
            self.standardize.set_weights(self.obs_stats.arrays())

    def inputs(self, obs: np.ndarray) -> np.ndarray:
        return standardized(obs, self.obs_stats) if self.obs_stats is not None else obs

    def logits(self, obs: np.ndarray) -> np.ndarray:
        return dense_layers(self.actor, self.inputs(obs), self.activation)

    def probabilities(self, obs: np.ndarray) -> np.ndarray:
        logits = self.logits(obs)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))  # softmax, shifted so exp cannot overflow
        return e / e.sum(axis=1, keepdims=True)

    def values(self, obs: np.ndarray) -> np.ndarray:
        """V(s) for a batch of observations."""
        return dense_layers(self.critic, self.inputs(obs), self.activation)[:, 0]

    def sample(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One action per row, drawn from pi(.|s): the first whose cumulative probability passes a uniform number."""
        cumulative = self.probabilities(obs).cumsum(axis=1)
        u = rng.random((len(obs), 1)) * cumulative[:, -1:]  # scaled: the sum may round to just under 1
        return (cumulative <= u).sum(axis=1)

    def greedy(self, obs: np.ndarray) -> int:
        """The most probable action for one observation."""
        return int(np.argmax(self.logits(obs[None])[0]))


# -------------------------------------------------------------------------- learning


def policy_gradient_loss(logits, values, actions, returns, normalize: bool, value_coef: float,
                         entropy_coef: float) -> tuple:
    """The loss above, and its parts for the logs. `normalize` scales the advantages to mean 0 and
    std 1 within the batch. The advantages are constants for the policy term (stop_gradient):
    the critic learns only from its own squared error."""
    advantages = returns - tf.stop_gradient(values)
    if normalize:
        mean, variance = tf.nn.moments(advantages, axes=[0])
        advantages = (advantages - mean) / (tf.sqrt(variance) + 1e-8)
    log_probs = tf.nn.log_softmax(logits)
    taken = tf.gather(log_probs, actions, batch_dims=1)  # log pi(a|s) of each taken action
    policy_loss = -tf.reduce_mean(taken * advantages)
    value_loss = tf.reduce_mean(tf.square(returns - values))
    entropy = -tf.reduce_mean(tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=1))
    loss = policy_loss + value_coef * value_loss - entropy_coef * entropy
    return loss, dict(loss=loss, policy_loss=policy_loss, value_loss=value_loss, entropy=entropy)


def make_update(model: keras.Model, args: argparse.Namespace) -> Callable:
    """Compile one gradient step on an Experience. Returns the loss's parts and the new weights (for the
    numpy copy that acts). A batch's length varies (REINFORCE's episodes), so it is traced once
    for any length."""
    obs_size = model.inputs[0].shape[1]

    @tf.function(input_signature=[tf.TensorSpec((None, obs_size), tf.float32), tf.TensorSpec((None,), tf.int32),
                                  tf.TensorSpec((None,), tf.float32)])
    def update(obs, actions, returns):
        with tf.GradientTape() as tape:
            logits, values = model(obs, training=True)
            loss, parts = policy_gradient_loss(logits, values[:, 0], actions, returns, args.normalize_advantages,
                                               args.value_coef, args.entropy_coef)
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return parts, [tf.identity(v) for v in model.trainable_variables]

    return update


# ------------------------------------------------------------- the run's state, saved whole


@dataclass
class TrainingState:
    """Everything a run has learned so far; the checkpoint saves exactly this and --resume loads it."""
    model: keras.Model  # the actor-critic network, with its optimizer
    actor: ActorCritic  # its numpy copy, which acts
    rng: np.random.Generator  # the sampled actions
    return_stats: RunningMeanStd | None = None  # --scale-rewards: the discounted returns' running statistics
    progress: bookkeeping.Progress = field(default_factory=bookkeeping.Progress)
    best_weights: list | None = None  # the weights of the best periodic evaluation so far (--keep-best)


def new_state(args: argparse.Namespace, env: gym.Env) -> TrainingState:
    keras.utils.set_random_seed(args.seed)
    model = create_actor_critic(env.observation_space.shape[0], int(env.action_space.n), args.units, args.shared,
                                args.lr, args.clip_norm, args.activation, args.normalize_observations)
    return_stats = RunningMeanStd.start() if args.scale_rewards else None
    return TrainingState(model, ActorCritic(model), np.random.default_rng(args.seed), return_stats)


def save_state(run_dir: Path, state: TrainingState, progress: bookkeeping.Progress | None = None) -> None:
    """The whole TrainingState in one file (bookkeeping.save_checkpoint); `progress` replaces its counters
    (with this moment's timings)."""
    return_stats = state.return_stats.arrays() if state.return_stats is not None else []
    arrays = {**bookkeeping.numbered("weights", state.model.get_weights()),
              **bookkeeping.numbered("best", state.best_weights or []),
              **bookkeeping.numbered("adam", [v.numpy() for v in optimizer_variables(state.model)]),
              **bookkeeping.numbered("return_stats", return_stats)}
    bookkeeping.save_checkpoint(run_dir, progress or state.progress, state.rng, arrays)


def load_state(run_dir: Path, state: TrainingState) -> None:
    def restore(saved) -> None:
        state.model.set_weights(bookkeeping.listed(saved, "weights"))
        restore_optimizer(state.model, bookkeeping.listed(saved, "adam"))
        state.best_weights = bookkeeping.listed(saved, "best") or None
        if state.return_stats is not None:
            state.return_stats = RunningMeanStd(*bookkeeping.listed(saved, "return_stats"))

    state.progress = bookkeeping.load_checkpoint(run_dir, state.rng, restore)
    state.actor.refresh()


# ------------------------------------------------------------------------ training loop

# A script's experience: collect(args, state, seed) yields Batches forever, acting with the state's
# actor (its latest weights) and rng, and scaling rewards with its return_stats; its envs start from `seed`.
Collect = Callable[[argparse.Namespace, TrainingState, int], Iterator[Experience]]


def train(args: argparse.Namespace, run_dir: Path, resuming: bool, collect: Collect) -> dict:
    """Train the actor-critic on collect's batches, writing logs, snapshots and summary.json to run_dir."""
    eval_env = make_env(args.env)
    state = new_state(args, eval_env)
    if resuming:
        load_state(run_dir, state)
        remove_leftovers(run_dir)  # temporary files of a write that a crash cut short
        print(f"resuming {run_dir} at step {state.progress.step}", flush=True)
    log = TensorBoardLogger(run_dir, None if resuming else vars(args), state.progress.step)
    batches = collect(args, state, int(state.rng.integers(2**31)) if resuming else args.seed)
    eval_env.reset(seed=int(state.rng.integers(2**31)))  # seeds the evaluation episodes' start states too
    status = training_loop(args, state, batches, eval_env, run_dir, log)
    batches.close()  # closes its envs
    final_returns, last_returns, sampled = finish(args, state, status, eval_env, run_dir, log)
    extra = dict(final_sampled_eval_mean=sampled, gradient_steps=int(state.model.optimizer.iterations))
    summary = bookkeeping.write_summary(run_dir, args, state.progress, status, final_returns, last_returns,
                                 eval_env.spec.reward_threshold, extra)
    eval_env.close()
    log.close()
    return summary


def training_loop(args: argparse.Namespace, state: TrainingState, batches: Iterator[Experience], eval_env: gym.Env,
                  run_dir: Path, log: TensorBoardLogger) -> str:
    """Gather a batch, take a gradient step on it; log, evaluate and snapshot; until the last step
    or Ctrl-C. Returns the status: finished, interrupted or diverged."""
    p, update, model = state.progress, make_update(state.model, args), state.model
    clock, averages = bookkeeping.Stopwatch(p.train_seconds), Averages()
    with bookkeeping.StopSignals() as stop, tqdm(total=args.steps, initial=p.step, desc="train", unit="step",
                                             smoothing=0.05, mininterval=1, disable=None) as bar:
        try:
            while p.step < args.steps and not stop.received:
                batch = next(batches)
                model.optimizer.learning_rate.assign(bookkeeping.linear(args.lr, args.lr_end, p.step / args.steps))
                state.actor.store_statistics()  # the update (and any snapshot after it) standardizes as acting did
                losses, weights = update(np.asarray(batch.obs, np.float32), np.asarray(batch.actions, np.int32),
                                         batch.returns)
                losses = {name: float(value) for name, value in losses.items()}
                if not np.isfinite(losses["loss"]):  # the last snapshot and checkpoint stay as they were
                    return "diverged"
                state.actor.refresh(weights)
                before, p.step, p.episode = p.step, p.step + len(batch.actions), p.episode + len(batch.episode_returns)
                for episode_return in batch.episode_returns:
                    log.scalar("episode/return", episode_return, p.step)
                    averages.add(episode_return=episode_return)
                averages.add(**losses)
                if bookkeeping.crossed(before, p.step, args.log_every):
                    log_progress(log, p, averages, bar)
                if args.eval_every and bookkeeping.crossed(before, p.step, args.eval_every):
                    evaluate_periodically(args, state, eval_env, log, clock)
                if bookkeeping.crossed(before, p.step, args.snapshot_every):
                    save_model(model, run_dir / f"step_{p.step}.keras")
                    save_state(run_dir, state, dataclasses.replace(p, train_seconds=clock()))
                bar.update(p.step - before)
        finally:
            p.train_seconds = clock()
    return "interrupted" if stop.received else "finished"


def log_progress(log: TensorBoardLogger, p: bookkeeping.Progress, averages: Averages, bar: tqdm) -> None:
    """The scalars averaged since the last log line, to TensorBoard and as one line."""
    means, sps = averages.take(), log.steps_per_second(p.step)
    for name in ("loss", "policy_loss", "value_loss", "entropy"):
        log.scalar(f"train/{name}", means[name], p.step)
    log.scalar("perf/steps_per_second", sps, p.step)
    bar.write(f"episode {p.episode:6d}  step {p.step:8d}  value loss {shown(means.get('value_loss'), 8, 3)}  "
              f"entropy {means['entropy']:.3f}  return {shown(means.get('episode_return'), 7, 1)}  {sps:6.0f} steps/s")


def evaluate_periodically(args: argparse.Namespace, state: TrainingState, eval_env: gym.Env, log: TensorBoardLogger,
                          clock: bookkeeping.Stopwatch) -> None:
    """Log the greedy policy's mean return; note when it first solves the env and keep its best weights."""
    mean = float(evaluate_episodes(eval_env, state.actor.greedy, args.eval_episodes).mean())
    log.scalar("eval/mean_return", mean, state.progress.step)
    if bookkeeping.record_evaluation(state.progress, mean, eval_env.spec.reward_threshold, clock(), args.keep_best):
        state.best_weights = state.model.get_weights()


def finish(args: argparse.Namespace, state: TrainingState, status: str, eval_env: gym.Env,
           run_dir: Path, log: TensorBoardLogger) -> tuple[np.ndarray | None, np.ndarray | None, float | None]:
    """Save what the status calls for; after a finished run, evaluate the final and the last
    weights greedily, and the final ones as they train (sampling their actions)."""
    p, model = state.progress, state.model
    if status == "diverged":
        return None, None, None
    if status == "interrupted":
        save_model(model, run_dir / f"step_{p.step}.keras")
    save_state(run_dir, state)
    if status != "finished":
        return None, None, None
    save_model(model, run_dir / "last.keras")
    episodes, seed = args.final_eval_episodes, final_eval_seed(args.seed)  # the same start states for all
    last_returns = evaluate_episodes(eval_env, state.actor.greedy, episodes, seed) if episodes else None
    best_is_last = state.best_weights is None or p.best_eval_step == p.step
    if not best_is_last:
        model.set_weights(state.best_weights)
        state.actor.refresh()
    save_model(model, run_dir / "final.keras")
    if not episodes:
        return None, None, None
    final_returns = last_returns if best_is_last else evaluate_episodes(eval_env, state.actor.greedy, episodes, seed)
    log.scalar("eval/final_mean_return", final_returns.mean(), p.step)
    sampling = np.random.default_rng(args.seed + 20_000)  # not the training's generator: resuming stays exact
    sampled = evaluate_episodes(eval_env, lambda s: int(state.actor.sample(s[None], sampling)[0]), episodes, seed)
    return final_returns, last_returns, float(sampled.mean())


# ----------------------------------------------------------------------------- main


def play(args: argparse.Namespace) -> None:
    """--model PATH with --view, --eval, --video and/or --gif: the most probable action at each step."""
    actor = ActorCritic(load_model(args.model, make_env(args.env), actor_critic=True))
    play_saved(args, play_env(args.env, args.view, args.video, args.gif, args.gif_steps), actor.greedy)


def main(argv: list[str] | None, algo: str, collect: Collect) -> int:
    """A policy-gradient script's command line: train (or resume) with its `collect`, or play a snapshot."""
    args = parse_args(argv, algo)
    if is_atari(args.env):
        fail(f"{args.env}: {ALGORITHMS[algo].script}'s networks take a few numbers per observation; "
             "learn from pixels with run.py")
    use_threads(tf, 1)  # a network this small gains nothing from more
    if args.model:
        play(args)
        return 0
    return bookkeeping.train_and_report(args, algo, functools.partial(train, collect=collect))
