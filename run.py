"""Deep Q-learning (DQN) with TensorFlow 2 / Keras 3 on a Gymnasium env: the Q-network, acting, the targets
and the update, the training loop, evaluation, playing a saved model. Its hyperparameters, each with its default
and why, are in hyperparameters.py; the replay in replay_buffer.py, the curves in loggers.py; atari.py learns
from pixels on this file's pieces. python run.py [--env ID]; python run.py --model runs/NAME/final.keras --view
"""

import argparse
import time
from pathlib import Path

from plumbing.bookkeeping import Progress, train_and_report
from plumbing.settings import learns_from_pixels, parse_args
from plumbing.startup import load_tensorflow, prepare_for, use_threads

if __name__ == "__main__":
    prepare_for(parse_args())  # bad flags fail in one line now, before TensorFlow's seconds of loading
tf = load_tensorflow()

import gymnasium as gym
import keras
import numpy as np

from loggers import Averages, log_episode, log_training
from plumbing import serving
from plumbing.dqn_run import Run, TrainingState
from plumbing.envs import evaluate_episodes, finite, make_env, play_env, play_saved
from plumbing.keras_files import load_model
from replay_buffer import Batch, PrioritizedReplayBuffer, ReplayBuffer
import value_map


# ------------------------------------------------------------------------------ Q-network
@keras.saving.register_keras_serializable(package="dqn")
class Dueling(keras.layers.Layer):
    """Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a') (or max; Wang et al. 2016), which makes V and A identifiable."""

    def __init__(self, mode: str = "avg", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs):
        value, advantage = inputs
        reduce = keras.ops.mean if self.mode == "avg" else keras.ops.max
        return value + advantage - reduce(advantage, axis=1, keepdims=True)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


def dense_torso(obs, units: int, dtype: str = "float32"):
    """Two hidden ReLU layers, for observations that are a few numbers (classic control, Box2D)."""
    h = keras.layers.Dense(units, activation="relu", name="hidden_0", dtype=dtype)(obs)
    return keras.layers.Dense(units, activation="relu", name="hidden_1", dtype=dtype)(h)


def create_model(obs_shape: int | tuple[int, ...], n_actions: int, units: int, lr, clip_norm: float,
                 loss: str = "mse", dueling: str = "none", torso=None, obs_dtype: str = "float32",
                 precision: str = "float32") -> keras.Model:
    """Q(s, .) for all actions, times an action mask: all ones gives every action's Q-value (for acting and the
    target), one-hot only the taken action's (for the loss). `torso`: atari.py's conv one for frames."""
    obs = keras.Input((obs_shape,) if isinstance(obs_shape, int) else tuple(obs_shape), dtype=obs_dtype, name="obs")
    mask = keras.Input((n_actions,), name="action_mask")
    # --precision bfloat16: the torso multiplies in bfloat16 (its weights stay float32, Keras casts them); the head
    # below computes in float32, so the Q-values in the targets and the loss keep float32's precision.
    dtype = "mixed_bfloat16" if precision == "bfloat16" else "float32"
    h = dense_torso(obs, units, dtype) if torso is None else torso(obs, dtype)
    if dueling == "none":
        q = keras.layers.Dense(n_actions, name="q")(h)
    else:
        value, advantage = keras.layers.Dense(1, name="value")(h), keras.layers.Dense(n_actions, name="advantage")(h)
        q = Dueling(dueling, name="dueling")([value, advantage])
    model = keras.Model([obs, mask], keras.layers.Multiply(name="masked_q")([q, mask]))
    model.compile(optimizer=keras.optimizers.Adam(lr, global_clipnorm=clip_norm),  # not "mse": its .h5 won't load
                  loss=keras.losses.Huber() if loss == "huber" else keras.losses.MeanSquaredError())
    return model


# --------------------------------------------------------------------------------- acting
def epsilon_at(step: int, args: argparse.Namespace) -> float:
    """Exploration at this env step: linear from start to end over --epsilon-steps, or start * decay**step."""
    start, end = args.epsilon_start, args.epsilon_end
    if args.epsilon_schedule == "exponential":
        return max(end, start * args.epsilon_decay**step)
    return end if args.epsilon_steps == 0 else start + (end - start) * min(step / args.epsilon_steps, 1.0)


class QValues:
    """Q(s, .) of observations for acting: numpy on a copy of a dense net's weights (cheaper than a Keras call)."""

    def __init__(self, model: keras.Model):
        self.model, self.n_actions = model, int(model.output_shape[-1])
        names = {layer.name for layer in model.layers}
        self.dueling = model.get_layer("dueling").mode if "dueling" in names else "none"
        self.layers = ["hidden_0", "hidden_1", *(["q"] if self.dueling == "none" else ["value", "advantage"])]
        self.in_numpy = set(self.layers) <= names
        self.compiled = tf.function(lambda obs: model([obs, tf.ones((tf.shape(obs)[0], self.n_actions))]),
                                    reduce_retracing=True)  # with the all-ones mask
        self.refresh()

    def refresh(self, values: list | None = None) -> None:  # the weights, or these values (from the update)
        if self.in_numpy:
            values = self.model.trainable_variables if values is None else values
            w = {v.path: np.asarray(value) for v, value in zip(self.model.trainable_variables, values, strict=True)}
            self.weights = [(w[f"{name}/kernel"], w[f"{name}/bias"]) for name in self.layers]

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

    def greedy(self, obs: np.ndarray) -> int:
        return int(np.argmax(self(obs[None])[0]))  # argmax_a Q(s, a) of one observation


def epsilon_greedy(q_values: QValues, obs: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """A random action with probability epsilon, else the greedy one."""
    if rng.random() < epsilon:
        return int(rng.integers(q_values.n_actions))
    return q_values.greedy(obs)


# ------------------------------------------------------------------------------- learning
def bellman_targets(target_model: keras.Model, reward, next_obs, terminated, discount,
                    online_model: keras.Model | None = None):
    """y = r + gamma**k * max_a' Q_target(s', a') for a k-step return; a termination stops the bootstrap, a time limit
    does not (the car could have kept driving). The target network, copied now and then, keeps y from chasing the
    weights being updated (Mnih et al. 2015). --double (van Hasselt et al. 2016): Q_target(s', argmax Q_online(s'))."""
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
    """Compile DQN's update: G gradient steps on G minibatches (a Batch of shape (G, batch, ...)) in one call, as the
    per-call cost dominates a small network; returns the mean loss, |TD errors|, the new weights. All G targets come
    from the networks at the call's start (with --tau or --double they lag < G steps)."""
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
                # The one-hot mask zeroes the other actions: the sum is the taken action's Q-value, and the loss the
                # minibatch's mean (y - Q(s, a))^2 (or its Huber form), each scaled by its --prioritized weight.
                q_taken = tf.reduce_sum(model([batch.obs[i], mask], training=True), axis=1)
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


def new_state(args: argparse.Namespace, obs_shape: tuple, n_actions: int, replay, **network) -> TrainingState:
    """Fresh networks (the target a copy of the online one; `network`: a torso), `replay`, counters at 0."""
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    updates = (args.steps - args.learning_starts) // args.train_freq * args.gradient_steps  # lr decays per update
    lr = keras.optimizers.schedules.PolynomialDecay(args.lr, max(updates, 1), args.lr_end)
    model, target = (create_model(obs_shape, n_actions, args.units, lr, args.clip_norm, args.loss, args.dueling,
                                  precision=args.precision, **network) for _ in range(2))
    target.set_weights(model.get_weights())
    return TrainingState(model, target, replay, rng, Progress())  # what the checkpoint saves (plumbing/dqn_run.py)


def learn(args: argparse.Namespace, state: TrainingState, update, stats: Averages) -> list | None:
    """Sample G minibatches, take G gradient steps in one call; the new weights, or None if the loss is not finite."""
    replay, rng, step = state.replay, state.rng, state.progress.step
    if state.validation_obs is None:
        state.validation_obs = replay.sample(rng, min(1000, len(replay))).obs
    shape = (args.gradient_steps, args.batch_size)
    if args.prioritized:  # beta rises to 1 (full bias correction) as training ends and the policy settles
        batch = replay.sample(rng, shape, beta=args.per_beta + (1 - args.per_beta) * step / args.steps)
        stats["is_weight"].append(float(batch.weight.mean()))
    else:
        batch = replay.sample(rng, shape)
    started, first_call = time.perf_counter(), update.experimental_get_tracing_count() == 0
    loss, td_error, new_weights = update(batch._replace(index=None))
    state.progress.compile_seconds += first_call * (time.perf_counter() - started)  # compiling, timed apart
    if not np.isfinite(loss := float(loss)):
        return None
    td_error = td_error.numpy()
    if args.prioritized:
        replay.update_priorities(batch.index, td_error)
    stats["loss"].append(loss)
    stats["td_error"].append(float(td_error.mean()))
    return new_weights


# ---------------------------------------------------------- training loop, evaluation, playing
def train(args: argparse.Namespace, run_dir: Path, resuming: bool) -> dict:
    """Train a DQN agent, writing logs, snapshots and summary.json to run_dir; return the summary."""
    use_threads(tf, args.threads)  # here, not in main: a --resume runs with its saved settings
    eval_env = make_env(args.env)  # never the training env: evaluating would cut its episode short
    env = gym.wrappers.RecordEpisodeStatistics(make_env(args.env))  # info["episode"] at each episode's end
    shape, n_actions = env.observation_space.shape, int(env.action_space.n)
    replay = (PrioritizedReplayBuffer(args.buffer_size, shape, args.n_step, args.gamma, args.per_alpha, args.per_eps)
              if args.prioritized else ReplayBuffer(args.buffer_size, shape, args.n_step, args.gamma))
    state = new_state(args, shape, n_actions, replay)
    with Run(args, run_dir, state, resuming, lambda step: epsilon_at(step, args)) as run:
        obs, _ = env.reset(seed=int(state.rng.integers(2**31)) if resuming else args.seed)
        eval_env.reset(seed=int(state.rng.integers(2**31)))  # seeds the evaluation episodes' start states too
        status = training_loop(args, state, env, obs, eval_env, run)
    env.close()
    # The end: last.keras, final.keras (the best evaluated weights), their greedy returns, summary.json.
    return run.finish(status, eval_env, lambda seed: evaluate_episodes(eval_env, QValues(state.model).greedy,
                                                                       args.final_eval_episodes, seed))


def training_loop(args: argparse.Namespace, state: TrainingState, env: gym.Env, obs: np.ndarray, eval_env: gym.Env,
                  run: Run) -> str:
    """Act, store, learn, copy to the target; log, evaluate, snapshot; until the last step or Ctrl-C."""
    p, replay, rng, q_values = state.progress, state.replay, state.rng, QValues(state.model)
    update = make_update(state.model, state.target, args.double, args.tau)
    copy_to_target = tf.function(lambda: update_target(state.target, state.model))  # one compiled call in all
    stats, last_return = Averages(), None  # losses and TD errors since the last log line
    while p.step < args.steps and not run.stopping:
        step = p.step + 1
        # act, step the env, store the transition
        epsilon = epsilon_at(step, args)
        action = epsilon_greedy(q_values, obs, epsilon, rng)
        next_obs, reward, terminated, truncated, info = env.step(action)
        if not finite(next_obs, reward):
            return "bad_env_output"  # the step is not counted: the last snapshot is the last good state
        p.step = step
        replay.store(obs, action, np.sign(reward) if args.clip_rewards else reward, next_obs, terminated, truncated)
        obs = next_obs
        if terminated or truncated:
            last_return, p.episode = log_episode(run.log, info["episode"], step), p.episode + 1
            obs, _ = env.reset()

        # sample minibatches, compute Bellman targets, take gradient steps; copy to the target
        if step >= args.learning_starts and step % args.train_freq == 0:
            new_weights = learn(args, state, update, stats)
            if new_weights is None:
                p.step = step - 1
                return "diverged"
            q_values.refresh(new_weights)
        if args.tau is None and step % args.target_update == 0:
            copy_to_target()

        # log, evaluate, snapshot
        if step % args.log_every == 0:
            log_training(run.log, state, stats, {"train/epsilon": epsilon, "train/tau": args.tau}, last_return)
        if args.eval_every and step % args.eval_every == 0:
            evaluate_periodically(args, state, q_values, eval_env, run)
        if step % args.snapshot_every == 0:
            run.snapshot()
        run.tick(step)
    return "interrupted" if run.stopping else "finished"


def evaluate_periodically(args: argparse.Namespace, state: TrainingState, q_values: QValues, eval_env: gym.Env,
                          run: Run) -> None:
    """Log the greedy policy's mean return, and max_a Q(s, a) averaged over fixed states (a smooth signal)."""
    mean = float(evaluate_episodes(eval_env, q_values.greedy, args.eval_episodes).mean())
    run.log.scalar("eval/mean_return", mean, state.progress.step)
    if state.validation_obs is not None:
        run.log.scalar("eval/avg_max_q", float(q_values(state.validation_obs).max(axis=1).mean()), state.progress.step)
    run.evaluated(mean, eval_env.spec.reward_threshold)


def play(args: argparse.Namespace) -> int:
    """--model PATH: play greedily (--view, --eval, --video, --gif), draw it (--plot), serve it (--export)."""
    use_threads(tf, args.threads)
    env = make_env(args.env)
    q_values = QValues(model := load_model(args.model, env))
    if args.plot:
        value_map.draw(args.plot, env, q_values, args.seed)
    if args.export:
        print("wrote", *serving.export(model, args.env, args.export))
    if args.view or args.eval or args.video or args.gif:
        env = play_env(args.env, args.view, args.video, args.gif, args.gif_steps)
        play_saved(args, env, q_values.greedy)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model:
        return play(args)
    if learns_from_pixels(args):  # an ALE id (or the one a resumed run saved): atari.py learns from pixels
        import atari
        return train_and_report(args, "dqn", atari.train)
    return train_and_report(args, "dqn", train)


if __name__ == "__main__":
    raise SystemExit(main())
