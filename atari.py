"""DQN from pixels on Atari games (Mnih et al. 2015): `python run.py --env ALE/Pong-v5`, which hands
ALE ids to this file. It reuses run.py's pieces (the Q-network's head, the targets and the update,
learning from the replay) and owns what only pixels need: the conv torso over stacks of 84x84 frames,
N games stepped at once in ale_py's threads and acted on in one forward pass, FIRE and lives, the
clipped rewards, the replay that stores each frame once (frame_replay.py). Its recipe is the ATARI
preset in hyperparameters.py.
"""

import argparse
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from plumbing.startup import load_tensorflow, quiet_stderr, use_threads

tf = load_tensorflow()  # as run.py loads it (which has, when run.py hands over): without the start-up noise

import gymnasium as gym
import keras
import numpy as np
from tqdm import tqdm

from frame_replay import FrameReplayBuffer, PrioritizedFrameReplayBuffer
from loggers import Averages, log_episode, log_training
from plumbing.dqn_run import Run, TrainingState
from plumbing.envs import ALE_NOISE, ATARI_MAX_FRAMES, fire_action
from plumbing.keras_files import in_float32
from run import epsilon_at, learn, make_update, new_state


def conv_torso(frames, dtype: str = "float32"):
    """The Nature DQN torso (Mnih et al. 2015) for stacks of 84x84 uint8 frames, oldest first.
    The frames stay uint8 in the replay (4x smaller than float32) and are scaled to [0, 1] here; `dtype`
    is what the convolutions compute in."""
    h = keras.layers.Permute((2, 3, 1), name="channels_last")(frames)  # (stack, 84, 84) -> (84, 84, stack)
    h = keras.layers.Rescaling(1 / 255, name="scale", dtype=dtype)(h)
    for i, (filters, size, stride) in enumerate([(32, 8, 4), (64, 4, 2), (64, 3, 1)]):
        h = keras.layers.Conv2D(filters, size, stride, activation="relu", name=f"conv_{i}", dtype=dtype)(h)
    h = keras.layers.Flatten(name="flatten")(h)
    # The 512 features stay float32 under --precision bfloat16: with them in bfloat16 too, Pong learned worse.
    return keras.layers.Dense(512, activation="relu", name="features")(h)


class AtariGames:
    """N games of one Atari title stepped in ale_py's C++ threads, as a Gymnasium vector env, with the
    training preprocessing built in (84x84 grey, 4 frames per step max-pooled, no-op starts, FIRE at
    reset where the game needs it, zero-padded 4-frame stacks) and sticky actions (0.25, as evaluated).
    For learning (`lives_end_episodes`), a lost life is `terminated` (no value is bootstrapped past it,
    Mnih et al. 2015) while the game plays on, and the next action is FIRE (plumbing/envs.py's
    ServeWithFire says why); info["actions"] holds the actions taken. When whole games end, their raw
    scores and lengths are in info["episode"], which games in info["_episode"]."""

    def __init__(self, env_id: str, num_envs: int, threads: int, lives_end_episodes: bool = True):
        import ale_py
        from ale_py.vector_env import AtariVectorEnv

        gym.register_envs(ale_py)
        self.spec = gym.spec(env_id)
        name = env_id.removeprefix("ALE/").split("-")[0]
        game = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()  # ale_py's name: SpaceInvaders -> space_invaders
        with quiet_stderr(ALE_NOISE):
            self.envs = AtariVectorEnv(game, num_envs, num_threads=threads, autoreset_mode="SameStep",
                                       repeat_action_probability=0.25, max_num_frames_per_episode=ATARI_MAX_FRAMES,
                                       episodic_life=False, life_loss_info=lives_end_episodes, reward_clipping=False)
        self.num_envs = num_envs
        self.fire = fire_action([action.name for action in self.envs.ale.get_action_set()])
        self.single_observation_space = self.envs.single_observation_space
        self.single_action_space = self.envs.single_action_space

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        obs, info = self.envs.reset(seed=seed)
        self.lives, self.returns, self.lengths = info["lives"], np.zeros(self.num_envs), np.zeros(self.num_envs, int)
        self.serve = np.zeros(self.num_envs, bool)  # ale_py pressed FIRE at reset
        return obs, info

    def step(self, actions: np.ndarray) -> tuple:
        if self.fire is not None:
            actions = np.where(self.serve, self.fire, actions)
        obs, reward, terminated, truncated, info = self.envs.step(actions)
        info["actions"] = actions
        # A life lost: the frames go on (obs is the next observation); the game's end: the lives
        # jump back (or, in games without lives, stay 0) and obs is already the next game's.
        life_lost = info["lives"] < self.lives
        self.lives, self.serve = info["lives"], life_lost
        game_over = (terminated | truncated) & ~life_lost
        if "final_obs" in info:
            info["final_obs"] = np.where(game_over[:, None, None, None], info["final_obs"], obs)
        self.returns += reward
        self.lengths += 1
        if game_over.any():
            info["episode"], info["_episode"] = {"r": self.returns.copy(), "l": self.lengths.copy()}, game_over
            self.returns[game_over], self.lengths[game_over] = 0.0, 0
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self.envs.close()


def q_function(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """Q(s, .) of a batch of frame stacks (every game's at once): one compiled forward pass."""
    n_actions = model.output_shape[-1]
    compiled = tf.function(lambda obs: model([obs, tf.ones((tf.shape(obs)[0], n_actions))]), reduce_retracing=True)
    return lambda obs: compiled(tf.convert_to_tensor(obs)).numpy()


def epsilon_greedy(q_values: Callable, obs: np.ndarray, epsilon: float, rng: np.random.Generator,
                   n_actions: int) -> np.ndarray:
    """One action per game: random with probability epsilon, else greedy (no forward pass if all explore)."""
    explore = rng.random(len(obs)) < epsilon
    explorers = np.count_nonzero(explore)
    if explorers == len(obs):
        return rng.integers(n_actions, size=explorers)
    actions = np.argmax(q_values(obs), axis=1)
    if explorers:
        actions[explore] = rng.integers(n_actions, size=explorers)
    return actions


def crossed(before: int, now: int, period: int) -> int:
    """How many multiples of `period` the step count passed from `before` to `now`: the loop counts N
    games' steps per pass, so a task every `period` steps runs that many times (usually 0 or 1)."""
    return now // period - before // period


def train(args: argparse.Namespace, run_dir: Path, resuming: bool) -> dict:
    """Train a DQN agent on an Atari game, writing logs, snapshots and summary.json to run_dir."""
    use_threads(tf, args.threads)  # TensorFlow's threads; the games step in as many of ale_py's
    eval_games = AtariGames(args.env, args.eval_episodes, args.threads, lives_end_episodes=False)  # whole games
    games = AtariGames(args.env, args.num_envs, args.threads)
    shape, n_actions = tuple(games.single_observation_space.shape), int(games.single_action_space.n)
    frames = (args.buffer_size, args.num_envs, shape[1:], shape[0], args.n_step, args.gamma)
    replay = (PrioritizedFrameReplayBuffer(*frames, args.per_alpha, args.per_eps) if args.prioritized
              else FrameReplayBuffer(*frames))
    state = new_state(args, shape, n_actions, replay, torso=conv_torso, obs_dtype="uint8")
    with Run(args, run_dir, state, resuming, lambda step: epsilon_at(step, args)) as run:
        obs, _ = games.reset(seed=int(state.rng.integers(2**31)) if resuming else args.seed)
        eval_games.reset(seed=int(state.rng.integers(2**31)))  # seeds the evaluation games' start states too
        status = training_loop(args, state, games, obs, eval_games, run)
    games.close()
    return run.finish(status, eval_games, lambda seed: evaluate(eval_games, q_function(in_float32(state.model)),
                                                                args.final_eval_episodes, seed))  # current weights


def training_loop(args: argparse.Namespace, state: TrainingState, games: AtariGames, obs: np.ndarray,
                  eval_games: AtariGames, run: Run) -> str:
    """Act in every game, store, learn, copy to the target; log, evaluate, snapshot; until the last step
    or Ctrl-C. Each pass steps N games, so each periodic task runs as often as the step passed its period."""
    p, replay, rng, model = state.progress, state.replay, state.rng, state.model
    # With --precision bfloat16, acting and evaluation use a float32 copy: a forward pass of 8 frame stacks is
    # no faster in bfloat16 (docs/atari.md), and float32 plays as the saved files do.
    acting = in_float32(model)
    update, q_values = make_update(model, state.target, args.double, args.tau), q_function(acting)
    n_actions = int(games.single_action_space.n)
    replay.start_all(obs)
    stats, last_return = Averages(), None  # losses and TD errors since the last log line
    while p.step < args.steps and not run.stopping:
        before, step = p.step, p.step + games.num_envs
        # act in every game, step them, store the transitions (learning from the sign of each reward)
        epsilon = epsilon_at(step, args)
        actions = epsilon_greedy(q_values, obs, epsilon, rng, n_actions)
        obs, rewards, terminated, truncated, info = games.step(actions)
        p.step = step
        replay.store(info["actions"], np.sign(rewards) if args.clip_rewards else rewards, obs, terminated, truncated,
                     info)
        for game in np.flatnonzero(info.get("_episode", [])):  # whole games ended: their raw scores
            episode = {key: values[game] for key, values in info["episode"].items()}
            last_return, p.episode = log_episode(run.log, episode, step), p.episode + 1

        # sample minibatches, compute Bellman targets, take gradient steps; copy to the target
        for _ in range(crossed(before, step, args.train_freq) if step >= args.learning_starts else 0):
            if (new_weights := learn(args, state, update, stats)) is None:
                p.step = before
                return "diverged"
            if acting is not model:
                acting.set_weights(new_weights)
        for _ in range(crossed(before, step, args.target_update) if args.tau is None else 0):
            state.target.set_weights(model.get_weights())

        # log, evaluate, snapshot
        if crossed(before, step, args.log_every):
            log_training(run.log, state, stats, {"train/epsilon": epsilon, "train/tau": args.tau}, last_return)
        if args.eval_every and crossed(before, step, args.eval_every):
            evaluate_periodically(args, state, q_values, eval_games, run)
        if crossed(before, step, args.snapshot_every):
            run.snapshot()
        run.tick(step)
    return "interrupted" if run.stopping else "finished"


def play_games(games: AtariGames, policy: Callable, count: int, seed: int | None = None) -> Iterator[float]:
    """Play `count` whole games on all of `games` at once, with `policy(obs_batch) -> actions`; yield
    each game's score as it ends. Each game slot plays the same number of games, its first ones:
    counting whichever games end first would favour short games."""
    quota = count // games.num_envs + (np.arange(games.num_envs) < count % games.num_envs)
    played = np.zeros(games.num_envs, int)
    obs, _ = games.reset(seed=seed)
    while (played < quota).any():
        obs, _, _, _, info = games.step(policy(obs))
        if "episode" in info:
            for game in np.flatnonzero(info["_episode"] & (played < quota)):
                played[game] += 1
                yield float(info["episode"]["r"][game])


def evaluate(games: AtariGames, q_values: Callable, count: int, seed: int | None = None) -> np.ndarray:
    """Greedy scores of `count` whole games, played as they are scored (every life, raw scores)."""
    scores = play_games(games, lambda obs: np.argmax(q_values(obs), axis=1), count, seed)
    return np.array(list(tqdm(scores, total=count, desc="eval", leave=False, disable=None)))


def evaluate_periodically(args: argparse.Namespace, state: TrainingState, q_values: Callable,
                          eval_games: AtariGames, run: Run) -> None:
    """Log the greedy policy's mean score and the mean max_a Q(s, a) over fixed states; the run keeps the
    best weights."""
    mean = float(evaluate(eval_games, q_values, args.eval_episodes).mean())
    run.log.scalar("eval/mean_return", mean, state.progress.step)
    if state.validation_obs is not None:
        run.log.scalar("eval/avg_max_q", float(q_values(state.validation_obs).max(axis=1).mean()), state.progress.step)
    run.evaluated(mean, eval_games.spec.reward_threshold)
