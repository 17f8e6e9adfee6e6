"""What a Q-network learned, drawn over an observation of two numbers (MountainCar's position and
velocity): the state value max_a Q(s, a) as a heat map and the greedy action argmax_a Q(s, a) as a
map, with one greedy episode on top. `python run.py --model runs/<name>/final.keras --plot map.png`.

For MountainCar the value map is the textbook's spiral: the car must swing back and forth to climb,
so states on the way (fast enough, in the right direction) are worth more than states nearer the flag.
"""

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np

from plumbing.settings import fail

# Gymnasium names no actions for the classic envs; these are MountainCar's, from its docs.
ACTION_NAMES = {"MountainCar-v0": ["push left", "no push", "push right"]}


def check_drawable(env: gym.Env) -> None:
    """A one-line error unless the observation is two bounded numbers (a plane to draw on)."""
    raw = env.unwrapped.observation_space
    if raw.shape != (2,) or not np.all(np.isfinite(raw.low)) or not np.all(np.isfinite(raw.high)):
        fail(f"--plot draws the Q-network over an observation of two bounded numbers (MountainCar-v0); "
             f"{env.spec.id}'s observation is {raw}")


def network_input(env: gym.Env, raw: np.ndarray) -> np.ndarray:
    """Observations in the env's own units, as the network sees them (make_env scales MountainCar's to [-1, 1])."""
    return env.observation(raw).astype(np.float32) if isinstance(env, gym.ObservationWrapper) else raw


def value_and_policy(env: gym.Env, q_values: Callable, resolution: int = 101):
    """max_a Q and argmax_a Q on a resolution x resolution grid over the observation box. Returns the
    grid's x and y values (the env's own units) and two (len(y), len(x)) arrays: values and actions."""
    raw = env.unwrapped.observation_space
    xs = np.linspace(raw.low[0], raw.high[0], resolution, dtype=np.float32)
    ys = np.linspace(raw.low[1], raw.high[1], resolution, dtype=np.float32)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)  # row-major: y varies slowest
    q = q_values(network_input(env, grid))
    return xs, ys, q.max(axis=1).reshape(len(ys), len(xs)), q.argmax(axis=1).reshape(len(ys), len(xs))


def greedy_episode(env: gym.Env, q_values: Callable, seed: int = 0) -> np.ndarray:
    """The observations, in the env's own units, of one episode of the greedy policy."""
    raw, _ = env.unwrapped.reset(seed=seed)
    path, limit = [raw], env.spec.max_episode_steps or 10_000
    for _ in range(limit):
        action = int(q_values(network_input(env, raw[None]))[0].argmax())
        raw, _, terminated, truncated, _ = env.unwrapped.step(action)
        path.append(raw)
        if terminated or truncated:
            break
    return np.array(path)


def draw(path: str, env: gym.Env, q_values: Callable, seed: int = 0) -> None:
    """The two maps side by side, the greedy episode on both, written to the PNG `path` (and said so)."""
    check_drawable(env)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from plumbing.atomic import write_atomically

    xs, ys, values, actions = value_and_policy(env, q_values)
    episode = greedy_episode(env, q_values, seed)
    n = env.action_space.n
    names = ACTION_NAMES.get(env.spec.id, [f"action {a}" for a in range(n)])
    box = [xs[0], xs[-1], ys[0], ys[-1]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    shown = left.imshow(values, origin="lower", extent=box, aspect="auto", cmap="viridis")
    fig.colorbar(shown, ax=left, label="max_a Q(s, a)")
    colors = ListedColormap([plt.get_cmap("Set2")(a) for a in range(n)])
    right.imshow(actions, origin="lower", extent=box, aspect="auto", cmap=colors, vmin=-0.5, vmax=n - 0.5,
                 interpolation="nearest")
    right.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colors(a)) for a in range(n)], labels=names,
                 loc="upper left", fontsize=8)
    labels = ["position", "velocity"] if env.spec.id == "MountainCar-v0" else ["observation 0", "observation 1"]
    for ax, title in [(left, "state value"), (right, "greedy action")]:
        ax.plot(episode[:, 0], episode[:, 1], color="white" if ax is left else "black", linewidth=1.2,
                label=None)
        ax.plot(*episode[0], "o", color="red", markersize=5)
        ax.set(xlabel=labels[0], ylabel=labels[1], title=f"{env.spec.id}: {title}")
    fig.suptitle(f"one greedy episode (seed {seed}, red dot: its start): {len(episode) - 1} steps", fontsize=9)
    fig.tight_layout()
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    except OSError as e:
        fail(f"--plot {path}: cannot write it ({e.strerror or e}); give a PNG file in a writable folder")
    finally:
        plt.close(fig)
    print(f"wrote {path}")
