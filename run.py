"""Deep Q-learning (DQN) on Gymnasium's MountainCar, with TensorFlow 2 / Keras 3.

Train:     python run.py                              (writes runs/<name>/)
Watch:     python run.py --model runs/<name>/final.keras --view
Evaluate:  python run.py --model runs/<name>/final.keras --eval
Resume:    python run.py --resume runs/<name>
Curves:    tensorboard --logdir runs

The file reads top to bottom in the order the algorithm runs: exploration, learning
(Bellman targets and the gradient step), the run's state and its crash-safe checkpoint, the
training loop, and playing a saved model. The Q-network and the acting policy are in
networks.py, the flags in settings.py, the envs and the playing of episodes in envs.py.
"""

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runs import (
    CtrlC,
    Progress,
    Stopwatch,
    crossed,
    linear,
    listed,
    numbered,
    record_evaluation,
    train_and_report,
    write_summary,
)
from settings import learns_from_pixels, parse_args
from startup import load_tensorflow, use_threads

if __name__ == "__main__":
    # Bad flags get their one-line error now, not after the seconds TensorFlow takes to load.
    if learns_from_pixels(parse_args()):
        # oneDNN's convolutions make the conv net's update ~1.6x faster (README); dense nets keep the
        # project's default (off: the same numbers on every CPU). A value set by the user wins.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    # Keras imports pandas whenever it is installed (Ray Tune, used by bench.py, brings it) only
    # to accept DataFrames, which we never pass. Marking it absent saves ~120 MB per training.
    sys.modules.setdefault("pandas", None)
tf = load_tensorflow()  # before Keras, which loads it too: the project's oneDNN default, no noise

import gymnasium as gym
import keras
import numpy as np
import psutil
from tqdm import tqdm

import runs
from atomic import remove_leftovers
from envs import (
    AtariGames,
    make_env,
    make_eval_env,
    make_training_envs,
    play_env,
    play_saved,
    run_episodes,
    run_games,
)
from frame_replay import FrameReplayBuffer, PrioritizedFrameReplayBuffer
from loggers import Averages, TensorBoardLogger
from networks import Policy, create_model, load_model, optimizer_variables, restore_optimizer, save_model
from replay_buffer import Batch, PrioritizedReplayBuffer, ReplayBuffer, StepWriter

# --------------------------------------------------------------------------- exploration


def epsilon_at(step: int, start: float, end: float, anneal_steps: int, schedule: str = "linear",
               decay: float = 1.0) -> float:
    """Linear annealing from start to end over anneal_steps, then constant; or exponential
    decay, start * decay**step, never below end."""
    if schedule == "exponential":
        return max(end, start * decay**step)
    if anneal_steps == 0:
        return end
    return linear(start, end, step / anneal_steps)


def make_epsilon_schedule(args: argparse.Namespace) -> Callable[[int], float]:
    """epsilon_at with the run's settings: step -> epsilon."""
    return functools.partial(epsilon_at, start=args.epsilon_start, end=args.epsilon_end,
                             anneal_steps=args.epsilon_steps, schedule=args.epsilon_schedule, decay=args.epsilon_decay)


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

    Takes a replay_buffer.Batch whose fields have shape (G, batch, ...); its `weight`
    (--prioritized) holds importance weights. Returns the mean loss, each transition's
    |TD error| (G, batch) and the new weights. Doing several steps per call and compiling
    with XLA removes the per-call overhead that dominates such a small network (see
    `bench.py --throughput`).
    The targets of all G minibatches are computed at once, from the networks as they are at
    the start of the call. With hard copies the target network is frozen during the call
    anyway; with --tau or --double they lag by at most G gradient steps.
    """
    n_actions = model.output_shape[-1]

    # XLA fuses the dense network's many small ops, but runs the conv net's convolutions ~10x slower.
    @tf.function(jit_compile=len(model.inputs[0].shape) == 2)
    def fit_batch(batch: Batch):
        g, b = tf.shape(batch.reward)[0], tf.shape(batch.reward)[1]

        def flat(x):  # (G, batch, ...) -> (G * batch, ...)
            return tf.reshape(x, tf.concat([[g * b], tf.shape(x)[2:]], 0))

        online = model if double else None
        y = bellman_targets(target_model, flat(batch.reward), flat(batch.next_obs), flat(batch.terminated),
                            flat(batch.discount), online)
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
        # Returning the new weights lets the caller copy them to numpy for acting at no
        # extra cost (reading the variables in separate calls costs ~0.1 ms each).
        return total / tf.cast(g, tf.float32), td_errors.stack(), [tf.identity(v) for v in model.trainable_variables]

    return fit_batch


# ------------------------------------------------------------- the run's state, saved whole


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
    elif args.prioritized:
        replay = PrioritizedReplayBuffer(args.buffer_size, obs_shape, args.per_alpha, args.per_eps)
    else:
        replay = ReplayBuffer(args.buffer_size, obs_shape)
    return TrainingState(model, target, replay, rng, Progress())


def save_checkpoint(run_dir: Path, state: TrainingState, progress: Progress | None = None) -> None:
    """The whole TrainingState in one file (runs.save_checkpoint). `progress` replaces
    state.progress (the counters with this moment's timings)."""
    arrays = {**numbered("online", state.model.get_weights()), **numbered("target", state.target.get_weights()),
              **numbered("adam", [v.numpy() for v in optimizer_variables(state.model)]),
              **numbered("best", state.best_weights or []),
              **{f"replay/{k}": v for k, v in state.replay.arrays().items()}}
    if state.validation_obs is not None:
        arrays["validation_obs"] = state.validation_obs
    runs.save_checkpoint(run_dir, progress or state.progress, state.rng, arrays)


def load_checkpoint(run_dir: Path, state: TrainingState) -> None:
    """Inverse of save_checkpoint, into the freshly built `state`."""
    def restore(saved) -> None:
        state.model.set_weights(listed(saved, "online"))
        state.target.set_weights(listed(saved, "target"))
        restore_optimizer(state.model, listed(saved, "adam"))
        state.replay.restore({k.removeprefix("replay/"): saved[k] for k in saved.files if k.startswith("replay/")})
        state.validation_obs = saved["validation_obs"] if "validation_obs" in saved.files else None
        state.best_weights = listed(saved, "best") or None

    state.progress = runs.load_checkpoint(run_dir, state.rng, restore)


# ------------------------------------------------------------------------ training loop


def train(args: argparse.Namespace, run_dir: Path, resuming: bool) -> dict:
    """Train a DQN agent, writing logs, snapshots and summary.json to run_dir; return the summary."""
    use_threads(tf, args.threads)  # here, not in main: a --resume runs with its saved settings (an Atari run's 2)
    eval_env = make_eval_env(args.env, args.eval_episodes, args.threads)
    envs = make_training_envs(args.env, args.num_envs, args.threads)
    state = new_state(args, envs)
    print(f"replay: {args.buffer_size:,} {'frames' if isinstance(state.replay, FrameReplayBuffer) else 'transitions'}"
          f", {state.replay.nbytes / 2**20:,.0f} MiB", flush=True)
    if resuming:
        load_checkpoint(run_dir, state)
        remove_leftovers(run_dir)  # temporary files of a write that a crash cut short
        step = state.progress.step
        print(f"resuming {run_dir} at step {step}: epsilon {make_epsilon_schedule(args)(step):.3f}, "
              f"{len(state.replay)} transitions in replay, "
              f"{tf.config.threading.get_intra_op_parallelism_threads()} TensorFlow threads", flush=True)
    log = TensorBoardLogger(run_dir)
    if not resuming:  # the settings travel with the curves
        log.settings(vars(args))
    obs, _ = envs.reset(seed=int(state.rng.integers(2**31)) if resuming else args.seed)
    eval_env.reset(seed=int(state.rng.integers(2**31)))  # seeds the evaluation episodes' start states too
    status = training_loop(args, state, envs, obs, eval_env, run_dir, log)
    final_returns, last_returns = finish(args, state, status, eval_env, run_dir, log)
    summary = write_summary(run_dir, args, state.progress, status, final_returns, last_returns,
                            eval_env.spec.reward_threshold, dict(gradient_steps=int(state.model.optimizer.iterations)))
    envs.close()
    eval_env.close()
    log.close()
    return summary


def training_loop(args: argparse.Namespace, state: TrainingState, envs, obs: np.ndarray, eval_env,
                  run_dir: Path, log: TensorBoardLogger) -> str:
    """Act, store, learn, copy to the target; log, evaluate and snapshot; until the last step or
    Ctrl-C. Returns the status: finished, interrupted, diverged or bad_env_output.

    Each pass steps every env of `envs` once (p.step counts env steps over all of them) and does
    each periodic task as often as the step count passed a multiple of its period."""
    p, replay, rng, policy = state.progress, state.replay, state.rng, Policy(state.model)
    fit_batch = make_fit_batch(state.model, state.target, args.double, args.tau)
    # Compiled, the hard copy costs ~0.3 ms instead of ~3 ms for target.set_weights(model.get_weights()).
    copy_to_target = tf.function(functools.partial(update_target, state.target, state.model))
    writer = replay if isinstance(replay, FrameReplayBuffer) else StepWriter(replay, envs.num_envs, args.n_step,
                                                                              args.gamma)
    for env in range(envs.num_envs):
        writer.start(env, obs[env])
    epsilon_schedule, last_return = make_epsilon_schedule(args), float("nan")
    clock, averages = Stopwatch(p.train_seconds), Averages(p.step)
    with CtrlC() as ctrl_c, tqdm(total=args.steps, initial=p.step, desc="train", unit="step", smoothing=0.05,
                                 mininterval=1) as bar:
        try:
            while p.step < args.steps and not ctrl_c.pressed:
                before = p.step
                p.step = step = before + envs.num_envs
                # act, step the envs, store the transitions
                epsilon = epsilon_schedule(step)
                actions = policy.epsilon_greedy(obs, epsilon, rng)
                obs, rewards, terminated, truncated, info = envs.step(actions)
                if not finite(obs, rewards, info):
                    return "bad_env_output"
                actions = info.get("actions", actions)  # Atari games press FIRE for the agent after a lost life
                store(writer, actions, np.sign(rewards) if args.clip_rewards else rewards, obs, terminated,
                      truncated, info)
                if "episode" in info:  # whole games ended: their raw scores
                    returns = log_episodes(log, info, step)
                    p.episode, last_return = p.episode + len(returns), returns[-1]

                # sample minibatches, compute Bellman targets, take gradient steps
                for _ in range(crossed(before, step, args.train_freq) if step >= args.learning_starts else 0):
                    new_weights = learn(args, state, fit_batch, averages)
                    if new_weights is None:
                        return "diverged"
                    policy.refresh(new_weights)
                for _ in range(crossed(before, step, args.target_update) if args.tau is None else 0):
                    copy_to_target()

                # log, evaluate, snapshot
                if crossed(before, step, args.log_every):
                    log_progress(args, state, log, averages, epsilon, last_return, bar)
                if args.eval_every and crossed(before, step, args.eval_every):
                    evaluate_periodically(args, state, policy, eval_env, log, clock)
                if crossed(before, step, args.snapshot_every):
                    snapshot(run_dir, state, clock, bar)
                if hundreds := crossed(before, step, 100):
                    bar.update(100 * hundreds)
        finally:
            p.train_seconds = clock()
    return "interrupted" if ctrl_c.pressed else "finished"


def finite(obs: np.ndarray, rewards: np.ndarray, info: dict) -> bool:
    """No NaN or inf in what the envs returned (one sum: they propagate into it). Integer
    observations (Atari frames) cannot hold either: summing them would only cost time."""
    total = rewards.sum()
    if obs.dtype.kind == "f":
        total += obs.sum() + (info["final_obs"].sum() if "final_obs" in info else 0.0)
    return math.isfinite(total)


def store(writer, actions, rewards, obs, terminated, truncated, info: dict) -> None:
    """Each env's step into the replay; an env whose episode ended starts its next one from `obs`
    (its step led to info["final_obs"] instead)."""
    done = terminated | truncated
    for env in range(len(actions)):
        next_obs = info["final_obs"][env] if done[env] else obs[env]
        writer.add(env, actions[env], rewards[env], next_obs, terminated[env], truncated[env])
        if done[env]:
            writer.start(env, obs[env])


def log_episodes(log: TensorBoardLogger, info: dict, step: int) -> list[float]:
    """Log the return and length of each game that ended in this step; return those returns."""
    ended = np.flatnonzero(info["_episode"])
    for env in ended:
        log.scalar("episode/return", info["episode"]["r"][env], step)
        log.scalar("episode/length", info["episode"]["l"][env], step)
    return [float(info["episode"]["r"][env]) for env in ended]


def learn(args: argparse.Namespace, state: TrainingState, fit_batch: Callable, averages: Averages) -> list | None:
    """Sample G minibatches and take G gradient steps in one compiled call. Returns the new
    weights, or None if the loss is no longer finite."""
    replay, rng, step = state.replay, state.rng, state.progress.step
    if state.validation_obs is None:
        state.validation_obs = replay.sample(rng, min(1000, len(replay))).obs
    t_call = time.perf_counter()
    shape = (args.gradient_steps, args.batch_size)
    if args.prioritized:
        # beta rises to 1 (full bias correction) as training ends and the policy settles
        batch = replay.sample(rng, shape, beta=args.per_beta + (1 - args.per_beta) * step / args.steps)
        averages.add(is_weight=float(batch.weight.mean()))
    else:
        batch = replay.sample(rng, shape)
    first_call = fit_batch.experimental_get_tracing_count() == 0  # it traces and XLA-compiles the update
    loss, td_error, new_weights = fit_batch(batch._replace(index=None))
    if first_call:
        state.progress.compile_seconds += time.perf_counter() - t_call
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
    """The training scalars averaged since the last log line, to TensorBoard and as one line."""
    p = state.progress
    means, sps = averages.take(p.step)
    rss = psutil.Process().memory_info().rss / 2**20
    scalars = {"train/loss": means["loss"], "train/td_error": means["td_error"], "train/epsilon": epsilon,
               "train/target_distance": target_distance(state.model, state.target),
               "train/tau": float("nan") if args.tau is None else args.tau, "train/is_weight": means["is_weight"],
               "perf/steps_per_second": sps, "perf/rss_mb": rss}
    for tag, value in scalars.items():
        if np.isfinite(value):  # no loss before learning starts; no tau or weights unless switched on
            log.scalar(tag, value, p.step)
    bar.write(f"episode {p.episode:5d}  step {p.step:7d}  loss {means['loss']:8.4f}  return {last_return:7.1f}  "
              f"epsilon {epsilon:.3f}  {sps:6.0f} steps/s  {rss:4.0f} MiB")


def target_distance(model: keras.Model, target: keras.Model) -> float:
    """Mean |online - target| weight difference: a sawtooth with hard copies, smooth with --tau."""
    return float(np.mean([np.abs(w - t).mean() for w, t in zip(model.get_weights(), target.get_weights(),
                                                                strict=True)]))


def evaluate(env: gym.Env | AtariGames, policy: Policy, episodes: int, seed: int | None = None) -> np.ndarray:
    """Greedy returns over whole episodes on the evaluation env: one after the other, or, on
    Atari games, several at once."""
    if isinstance(env, AtariGames):
        returns = run_games(env, policy.greedy_actions, episodes, seed)
    else:
        returns = run_episodes(env, policy.greedy, episodes, seed)
    return np.array(list(tqdm(returns, total=episodes, desc="eval", leave=False)))


def evaluate_periodically(args: argparse.Namespace, state: TrainingState, policy: Policy, eval_env,
                          log: TensorBoardLogger, clock: Stopwatch) -> None:
    """Log the greedy policy's mean return; note when it first solves the env and keep its best weights."""
    p = state.progress
    mean = float(evaluate(eval_env, policy, args.eval_episodes).mean())
    log.scalar("eval/mean_return", mean, p.step)
    if state.validation_obs is not None:  # mean over fixed states of max_a Q(s, a): a smooth signal of progress
        log.scalar("eval/avg_max_q", float(policy.q_values(state.validation_obs).max(axis=1).mean()), p.step)
    if record_evaluation(p, mean, eval_env.spec.reward_threshold, clock(), args.keep_best):
        state.best_weights = state.model.get_weights()


def snapshot(run_dir: Path, state: TrainingState, clock: Stopwatch, bar: tqdm) -> None:
    """A step_N.keras file to play and the checkpoint to resume from, with this moment's timings."""
    p = state.progress
    save_model(state.model, run_dir / f"step_{p.step}.keras")
    save_checkpoint(run_dir, state, dataclasses.replace(p, train_seconds=clock()))
    bar.write(f"saved step_{p.step}.keras and the checkpoint at step {p.step} ({len(state.replay)} transitions)")


def finish(args: argparse.Namespace, state: TrainingState, status: str, eval_env, run_dir: Path,
           log: TensorBoardLogger) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Save what the status calls for; after a finished run, evaluate the final and the last
    weights. Returns their returns (None when not evaluated)."""
    p = state.progress
    if status in ("diverged", "bad_env_output"):  # keep the last good snapshot: nothing is saved now
        p.step -= args.num_envs
        return None, None
    if status == "interrupted":
        save_model(state.model, run_dir / f"step_{p.step}.keras")
    save_checkpoint(run_dir, state)
    if status != "finished":
        return None, None
    save_model(state.model, run_dir / "last.keras")
    episodes, eval_seed = args.final_eval_episodes, args.seed + 10_000  # same start states for both
    last_returns = evaluate(eval_env, Policy(state.model), episodes, eval_seed) if episodes else None
    # The best evaluation may have been the last one: then the final weights are the last ones.
    best_is_last = state.best_weights is None or p.best_eval_step == p.step
    if not best_is_last:
        state.model.set_weights(state.best_weights)
    save_model(state.model, run_dir / "final.keras")
    if not episodes:
        return None, None
    final_returns = last_returns if best_is_last else evaluate(eval_env, Policy(state.model), episodes, eval_seed)
    log.scalar("eval/final_mean_return", final_returns.mean(), p.step)
    return final_returns, last_returns


# ------------------------------------------------------------------------ saved models


def play(args: argparse.Namespace) -> None:
    """--model PATH with --view, --eval, --video and/or --gif."""
    use_threads(tf, args.threads)
    policy = Policy(load_model(args.model, make_env(args.env)))  # check it before writing anything
    play_saved(args, play_env(args.env, args.view, args.video, args.gif), policy.greedy)


# -------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model:
        play(args)
        return 0
    return train_and_report(args, "dqn", train)


if __name__ == "__main__":
    sys.exit(main())
