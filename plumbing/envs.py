"""Environments: creating one that DQN can learn, and playing episodes in a window, to mp4s or
to a GIF. No TensorFlow here: see.py's random agent uses this file alone.
"""

import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from plumbing.atomic import write_atomically
from plumbing.settings import fail, is_atari
from plumbing.startup import quiet_stderr
from plumbing.system import has_display
from plumbing.viewer import Window, WindowClosed, WindowError


def make_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    """Create an env, with a one-line error (exit 2) for ids or spaces DQN cannot handle."""
    if is_atari(env_id):
        return make_atari_env(env_id, render_mode)
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


ATARI_STACK = 4  # frames per observation: enough to see where the ball is going
ATARI_MAX_FRAMES = 108_000  # 30 minutes of play at 60 frames a second
ALE_NOISE = re.compile(r"^A\.L\.E: Arcade Learning Environment|^\[Powered by Stella\]")  # its C++ greeting


def make_atari_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    """One Atari game as it is scored: every life, raw scores, the v5 defaults (sticky actions
    with probability 0.25), at most 108,000 frames (30 minutes); seen through the training
    preprocessing: 84x84 grey frames, each action repeated for 4 frames with the last two
    max-pooled, up to 30 no-ops at the start, a stack of the last 4 frames (zeros before the
    first, as ale_py's vector env pads them)."""
    import ale_py

    gym.register_envs(ale_py)
    try:
        with quiet_stderr(ALE_NOISE):
            env = gym.make(env_id, frameskip=1, max_num_frames_per_episode=ATARI_MAX_FRAMES, render_mode=render_mode)
    except gym.error.Error as e:
        fail(f"unknown Atari game {env_id!r} ({e}); try ALE/Pong-v5 or ALE/Breakout-v5")
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, terminal_on_life_loss=False)
    env = ServeWithFire(env)
    return gym.wrappers.FrameStackObservation(env, ATARI_STACK, padding_type="zero")


def fire_action(action_names: list[str]) -> int | None:
    """The index of FIRE among a game's actions, or None if it has no FIRE."""
    return action_names.index("FIRE") if "FIRE" in action_names else None


class ServeWithFire(gym.Wrapper):
    """Breakout waits for FIRE before each ball, at a game's start and after each lost life. Here
    the game presses it for the agent, in place of its first action of each life, as the training
    games do (SB3's FireResetEnv does the same): else a greedy agent that never learned to serve
    stalls the game until the frame cap."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.fire = fire_action(env.unwrapped.get_action_meanings())

    def reset(self, **kwargs) -> tuple:
        obs, info = self.env.reset(**kwargs)
        self.lives, self.serve = info["lives"], self.fire is not None
        return obs, info

    def step(self, action: int) -> tuple:
        obs, reward, terminated, truncated, info = self.env.step(self.fire if self.serve else action)
        self.serve = self.fire is not None and info["lives"] < self.lives
        self.lives = info["lives"]
        return obs, reward, terminated, truncated, info


# ------------------------------------------------------------------------- training envs
# The training loop steps N envs at once and sees them as one vector env: batched arrays, an
# ended episode's next one started within the same step (its last observation in
# info["final_obs"]), and, when whole games (the episodes a user scores) end, their raw returns
# and lengths in info["episode"] and which envs they were in info["_episode"] (Gymnasium's
# RecordEpisodeStatistics convention).


def episode_info(info: dict, ended: np.ndarray, returns: np.ndarray, lengths: np.ndarray) -> None:
    info["episode"], info["_episode"] = {"r": returns, "l": lengths}, ended


class OneEnv:
    """A single env behind that interface. Gymnasium's SyncVectorEnv does the same, at a cost per
    step that slows a classic-control training by several percent (docs/results.md)."""
    num_envs = 1

    def __init__(self, env: gym.Env):
        self.env = env
        self.single_observation_space, self.single_action_space = env.observation_space, env.action_space

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(seed=seed)
        self.ret, self.len = 0.0, 0
        return obs[None], info

    def step(self, actions: np.ndarray) -> tuple:
        obs, reward, terminated, truncated, _ = self.env.step(int(actions[0]))
        self.ret, self.len, info = self.ret + float(reward), self.len + 1, {}
        if terminated or truncated:
            info["final_obs"] = obs[None]
            episode_info(info, np.array([True]), np.array([self.ret]), np.array([self.len]))
            (obs,), _ = self.reset()
        return obs[None], np.array([reward]), np.array([terminated]), np.array([truncated]), info

    def close(self) -> None:
        self.env.close()


class AtariGames:
    """N games of one Atari title stepped in ale_py's C++ threads, with the training
    preprocessing built in (84x84 grey, 4 frames per step max-pooled, no-op starts, FIRE at
    reset where the game needs it, zero-padded 4-frame stacks) and sticky actions (0.25, as
    evaluated). For learning (`lives_end_episodes`), a lost life is `terminated` (no value is
    bootstrapped past it, Mnih et al. 2015) while the game plays on; rewards stay raw (the loop
    clips them for learning). After a lost life the next action is FIRE (see ServeWithFire);
    info["actions"] holds the actions taken."""

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
            episode_info(info, game_over, self.returns.copy(), self.lengths.copy())
            self.returns[game_over], self.lengths[game_over] = 0.0, 0
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self.envs.close()


def finite(obs: np.ndarray, rewards: np.ndarray, info: dict) -> bool:
    """No NaN or inf in what the envs returned (one sum: they propagate into it). Integer
    observations (Atari frames) cannot hold either: summing them would only cost time."""
    total = rewards.sum()
    if obs.dtype.kind == "f":
        total += obs.sum() + (info["final_obs"].sum() if "final_obs" in info else 0.0)
    return math.isfinite(total)


def make_training_envs(env_id: str, num_envs: int, threads: int):
    """The vector env the training loop steps: Atari games, or one classic env. The id has been
    checked already (run.py makes the env once before writing anything)."""
    if is_atari(env_id):
        return AtariGames(env_id, num_envs, threads)
    return OneEnv(make_env(env_id))


def run_episodes(env: gym.Env, policy: Callable, episodes: int, seed: int | None = None) -> Iterator[float]:
    """Play whole episodes with `policy(obs) -> action`; yield each episode's return."""
    for i in range(episodes):
        obs, _ = env.reset(seed=seed if i == 0 else None)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        yield total


def evaluate_episodes(env: gym.Env, policy: Callable, episodes: int, seed: int | None = None) -> np.ndarray:
    """The returns of whole episodes played with `policy(obs) -> action`, with a progress bar."""
    returns = run_episodes(env, policy, episodes, seed)
    return np.array(list(tqdm(returns, total=episodes, desc="eval", leave=False, disable=None)))


def make_eval_env(env_id: str, games: int, threads: int) -> gym.Env | AtariGames:
    """The env a training evaluates on, never its training envs (stepping those would cut their
    current episodes short). Atari: `games` whole games at once, played as they are scored."""
    if is_atari(env_id):
        return AtariGames(env_id, games, threads, lives_end_episodes=False)
    return make_env(env_id)


def run_games(games: AtariGames, policy: Callable, count: int, seed: int | None = None) -> Iterator[float]:
    """Play `count` whole games on all of `games` at once, with `policy(obs_batch) -> actions`
    (one forward pass per step for all games); yield each game's score as it ends. Each game
    slot plays the same number of games, its first ones: counting whichever games end first
    would favour short games."""
    quota = count // games.num_envs + (np.arange(games.num_envs) < count % games.num_envs)
    played = np.zeros(games.num_envs, int)
    obs, _ = games.reset(seed=seed)
    while (played < quota).any():
        obs, _, _, _, info = games.step(policy(obs))
        if "episode" in info:
            for env in np.flatnonzero(info["_episode"] & (played < quota)):
                played[env] += 1
                yield float(info["episode"]["r"][env])


# ----------------------------------------------------------------------------- watching


class ShowInWindow(gym.Wrapper):
    """Draws every frame in a viewer.Window (another process), like render_mode="human" does
    in this one; the env underneath renders rgb_array frames."""

    def __init__(self, env: gym.Env, window_environment: dict[str, str]):
        super().__init__(env)
        self.window = Window(env.spec.id, env.metadata.get("render_fps", 30), window_environment)

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self.window.show(self.env.render())
        return out

    def step(self, action):
        out = self.env.step(action)
        self.window.show(self.env.render())
        return out

    def close(self) -> None:
        self.window.close()
        super().close()


class FirstEpisodeFrames(gym.Wrapper):
    """--gif's frames: those of the first episode, its first `limit` steps if given. A long Atari game
    (thousands of steps of 100 KB frames) would otherwise fill memory and make a GIF of megabytes."""

    def __init__(self, env: gym.Env, limit: int | None = None):
        super().__init__(env)
        self.frames, self.limit, self.episodes, self.steps = [], limit, 0, 0

    def reset(self, **kwargs):
        self.episodes += 1
        result = self.env.reset(**kwargs)
        self.keep()
        return result

    def step(self, action):
        result = self.env.step(action)
        if self.episodes == 1:
            self.steps += 1
        self.keep()
        return result

    def keep(self) -> None:
        if self.episodes == 1 and (self.limit is None or self.steps <= self.limit):
            self.frames.append(self.env.render())


def play_env(env_id: str, view: bool = False, video: str | None = None, gif: str | None = None,
             gif_steps: int | None = None) -> gym.Env:
    """An env to watch: shown in a window, recorded as mp4s and/or keeping frames for a GIF."""
    if view and not has_display(os.environ):
        fail("no display to open a window on; use --video DIR or --gif FILE, or set SDL_VIDEODRIVER=dummy")
    # This process only renders arrays, but gymnasium's renderers call pygame.init(), which would
    # connect to the display here as well; the window process gets the environment as it was.
    window_environment = dict(os.environ)
    os.environ["SDL_VIDEODRIVER"] = "dummy"
    env = make_env(env_id, "rgb_array" if view or video or gif else None)
    if view:
        env = ShowInWindow(env, window_environment)
    if video:
        env = gym.wrappers.RecordVideo(env, video, episode_trigger=lambda _: True, disable_logger=True)
    if gif:
        env = FirstEpisodeFrames(env, gif_steps)
    return env


def show_episodes(env: gym.Env, policy: Callable, episodes: int, seed: int | None, gif: str | None = None,
                  quiet: bool = False) -> np.ndarray:
    """Play episodes, print each return, write the first one to `gif`; return the returns.
    Closing the window ends the playing early."""
    returns = []
    try:
        for i, ret in enumerate(tqdm(run_episodes(env, policy, episodes, seed), total=episodes,
                                     desc="episodes", leave=False,
                                     disable=None if quiet else True)):
            returns.append(ret)
            if not quiet:
                print(f"episode {i + 1}: return {ret:.1f}", flush=True)
            if i == 0 and gif:
                frames, steps = env.get_wrapper_attr("frames"), env.get_wrapper_attr("steps")
                save_gif(frames, gif)
                if len(frames) <= steps:  # a frame from the reset and one per step kept: some were left out
                    print(f"{gif}: the first {len(frames) - 1:,} of the episode's {steps:,} steps", flush=True)
    except WindowError as e:
        fail(f"cannot open a window ({e}); use --video DIR or --gif FILE, or set SDL_VIDEODRIVER=dummy")
    except WindowClosed:
        print(f"window closed after {len(returns)} complete episode(s)", flush=True)
    env.close()
    return np.array(returns)


def play_saved(args, env: gym.Env, policy: Callable) -> None:
    """What --view, --eval, --video and --gif do with a saved model: play `policy` on `env` (from
    play_env) and print each return, or with --eval their mean and whether it solves the env."""
    returns = show_episodes(env, policy, args.episodes or (100 if args.eval else 3), args.seed, args.gif,
                            quiet=args.eval)
    if args.eval and len(returns):
        print_evaluation(env, returns)


def print_evaluation(env: gym.Env, returns: np.ndarray) -> None:
    """--eval's last line: the mean return, and whether it reaches the env's 'solved' threshold."""
    threshold = env.spec.reward_threshold
    verdict = "" if threshold is None else f"; solved: {'yes' if returns.mean() >= threshold else 'no'} " \
                                            f"(threshold {threshold})"
    print(f"{env.spec.id}: mean return {returns.mean():.1f} ± {returns.std():.1f} over {len(returns)} "
          f"episode{'s' * (len(returns) > 1)}{verdict}")


def save_gif(frames: list[np.ndarray], path: str, every: int = 2) -> None:
    """Every 2nd frame at half size keeps a 200-step episode's GIF under 100 KB."""
    import imageio.v3 as iio

    small = [f[::2, ::2] for f in frames[::every]]
    fps = 30 / every
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: iio.imwrite(tmp, small, duration=1000 / fps, loop=0))
