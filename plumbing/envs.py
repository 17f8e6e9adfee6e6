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
    """Create an env, with a one-line error (exit 2) for ids or spaces no script here can handle."""
    if is_atari(env_id):
        return make_atari_env(env_id, render_mode)
    try:
        env = gym.make(env_id, render_mode=render_mode)
    except gym.error.DependencyNotInstalled as e:
        fail(f"env {env_id!r} needs an extra package: {e}")
    except gym.error.Error as e:
        fail(f"unknown env {env_id!r} ({e}); try MountainCar-v0, CartPole-v1 or Acrobot-v1")
    if not isinstance(env.action_space, gym.spaces.Discrete):
        fail(f"env {env_id!r} has {type(env.action_space).__name__} actions; every agent here picks one of a few "
             "Discrete actions: try CartPole-v1, MountainCar-v0 or Acrobot-v1")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        fail(f"env {env_id!r} observes {env.observation_space}; the networks and tables here take a flat Box "
             "observation (a few numbers), or an Atari game's frames (ALE/<Game>-v5)")
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


def finite(obs: np.ndarray, reward: float) -> bool:
    """No NaN or inf in what an env returned (one sum: they propagate into it)."""
    return math.isfinite(float(reward) + float(np.sum(obs)))


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
