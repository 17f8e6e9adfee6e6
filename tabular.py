"""Tabular Q-learning on a discretized MountainCar: the step before DQN. Numpy only.

Train:     python tabular.py                              (writes runs/<name>/)
Watch:     python tabular.py --model runs/<name>/final.npy --view
Evaluate:  python tabular.py --model runs/<name>/final.npy --eval
Resume:    python tabular.py --resume runs/<name>
Curves:    tensorboard --logdir runs

The observation box is cut into --bins cells per dimension and the cells are numbered; Q is a
table with one row per cell and one column per action. Every step moves one entry toward its
one-step target (Watkins 1989):

    Q[s, a] += lr * (r + gamma * max_a' Q[s', a'] - Q[s, a])    (r alone when s' ends the episode)

Each cell is learned on its own: a state never visited keeps its starting value, which is why
the table needs many more steps than DQN, whose network generalises between nearby states.
--tilings N is the step in between (tile coding): N grids, each shifted by a fraction of a cell,
and Q(s, a) is the sum of the entries of the N cells s falls in. Nearby states share most of
their cells, so what one learns its neighbours learn too, and where the grids' cells overlap
they tell apart states closer together than one grid's cells could. Everything else (flags, run
folder, evaluation, logs, playing) is shared with run.py.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from loggers import Averages, TensorBoardLogger, shown
from plumbing.atomic import remove_leftovers, write_atomically
from plumbing.bookkeeping import (
    Progress,
    StopSignals,
    Stopwatch,
    linear,
    load_checkpoint,
    record_evaluation,
    save_checkpoint,
    train_and_report,
    write_summary,
)
from plumbing.envs import evaluate_episodes, make_env, play_env, play_saved
from plumbing.settings import fail, final_eval_seed, is_atari, parse_args

MAX_CELLS = 10_000_000  # 80 MB of table per action beyond this: lower --bins


class Tiles(gym.ObservationWrapper):
    """The observation as the numbers of the cells it falls in, one per grid. Grid k is --bins
    cells per dimension shifted by k/tilings of a cell, by k along the first number, 3k along
    the second, ... (Sutton & Barto 2018, 9.5.4: not all along one diagonal); a shifted grid
    needs one more cell per dimension to cover the box. With one grid, it is the plain table's cell."""

    def __init__(self, env: gym.Env, bins: int, tilings: int):
        super().__init__(env)
        space = env.observation_space
        self.low, self.width, dims = space.low, (space.high - space.low) / bins, space.shape[0]
        self.shift = (np.arange(tilings)[:, None] * (2 * np.arange(dims) + 1) / tilings % 1) * self.width
        self.per_dim = bins + (tilings > 1)
        self.cells = self.per_dim**dims  # per grid
        self.first = np.arange(tilings) * self.cells  # each grid's cells follow the previous grid's in the table
        self.observation_space = gym.spaces.MultiDiscrete(np.full(tilings, tilings * self.cells))

    def observation(self, obs: np.ndarray) -> np.ndarray:
        # A value on an edge belongs to the cell above it; the box's bounds to the first and last cells.
        cells = np.clip(np.floor((obs - self.low + self.shift) / self.width).astype(np.int64), 0, self.per_dim - 1)
        return self.first + np.ravel_multi_index(tuple(cells.T), (self.per_dim,) * len(self.low))


def make_table_env(env_id: str, bins: int, tilings: int = 1, env: gym.Env | None = None) -> Tiles:
    """The env with its observation replaced by the numbers of its cells (Tiles)."""
    if is_atari(env_id):
        fail(f"{env_id}: tabular Q-learning needs a few numbers per observation, not frames; "
             "train Atari games with run.py")
    env = env or make_env(env_id)
    space, dims = env.observation_space, env.observation_space.shape[0]
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        fail(f"{env_id} has unbounded observations, which cannot be cut into bins; "
             "tabular Q-learning needs bounded ones: try MountainCar-v0 or Acrobot-v1")
    if tilings * (bins + (tilings > 1)) ** dims > MAX_CELLS:
        fail(f"--bins {bins} cuts {env_id}'s {dims} observation numbers into {bins}^{dims} cells per grid, too many "
             f"for a table; lower --bins (at most {int((MAX_CELLS / tilings) ** (1 / dims)) - (tilings > 1)} for "
             f"this env with --tilings {tilings})")
    return Tiles(env, bins, tilings)


def q_row(q: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Q(s, .): the sum of the rows of the cells s falls in (one row without tile coding)."""
    return q[cells].sum(axis=0)


def td_update(q: np.ndarray, cells: np.ndarray, a: int, reward: float, next_cells: np.ndarray, terminated: bool,
              lr: float, gamma: float) -> float:
    """One Q-learning step on the table, in place; returns the TD error. Each of the N entries that
    sum to Q(s, a) takes 1/N of the step, so Q(s, a) itself moves by lr * error. A time-limit
    truncation is not a termination: its next state still bootstraps."""
    target = reward + (0.0 if terminated else gamma * q_row(q, next_cells).max())
    error = target - q[cells, a].sum()
    q[cells, a] += lr / len(cells) * error
    return float(error)


def epsilon_greedy(q_row: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """A random action with probability epsilon, else a best one, ties broken at random: with
    every entry at --q-init, always taking the first would never try the others."""
    if rng.random() < epsilon:
        return int(rng.integers(len(q_row)))
    best = np.flatnonzero(q_row == q_row.max())
    return int(best[0] if len(best) == 1 else rng.choice(best))


def evaluate(env: gym.Env, q: np.ndarray, episodes: int, seed: int | None = None) -> np.ndarray:
    """Greedy returns over whole episodes (ties to the first action: evaluation draws no numbers)."""
    return evaluate_episodes(env, lambda s: int(np.argmax(q_row(q, s))), episodes, seed)


def save_table(q: np.ndarray, path: Path, tilings: int) -> None:
    """Saved as (tilings, cells per grid, actions): playing it finds its --tilings and --bins in its shape."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: given a name, np.save would append .npy to it
            np.save(f, q.reshape(tilings, -1, q.shape[1]))

    write_atomically(path, write)


# ------------------------------------------------------------------------ training


def train(args: argparse.Namespace, run_dir: Path, resuming: bool) -> dict:
    """Train the table, writing logs, snapshots and summary.json to run_dir; return the summary."""
    env, eval_env = (make_table_env(args.env, args.bins, args.tilings) for _ in range(2))
    rng = np.random.default_rng(args.seed)
    q = np.full((env.observation_space.nvec[0], env.action_space.n), args.q_init / args.tilings)  # Q = sum of N
    tables = {"q": q}  # "best": the table of the best periodic evaluation (--keep-best)
    progress = Progress()
    print(f"table: {q.shape[0]:,} cells x {q.shape[1]} actions, {q.nbytes / 2**20:,.1f} MiB"
          + (f" ({args.tilings} grids)" if args.tilings > 1 else ""), flush=True)
    if resuming:
        progress = load_checkpoint(run_dir, rng, lambda saved: tables.update(q=saved["q"], **(
            {"best": saved["best"]} if "best" in saved.files else {})))
        remove_leftovers(run_dir)
        print(f"resuming {run_dir} at step {progress.step}", flush=True)
    log = TensorBoardLogger(run_dir, step=progress.step)
    if not resuming:  # the settings travel with the curves
        log.settings(vars(args))
    obs, _ = env.reset(seed=int(rng.integers(2**31)) if resuming else args.seed)
    eval_env.reset(seed=int(rng.integers(2**31)))
    status = training_loop(args, tables, progress, rng, env, obs, eval_env, run_dir, log)
    save_checkpoint(run_dir, progress, rng, tables)  # where --resume continues after a Ctrl-C
    final_returns, last_returns = finish(args, tables, progress, status, eval_env, run_dir, log)
    summary = write_summary(run_dir, args, progress, status, final_returns, last_returns,
                            eval_env.spec.reward_threshold)
    env.close()
    eval_env.close()
    log.close()
    return summary


def training_loop(args: argparse.Namespace, tables: dict, p: Progress, rng: np.random.Generator, env: gym.Env,
                  obs: np.ndarray, eval_env: gym.Env, run_dir: Path, log: TensorBoardLogger) -> str:
    """Act, update the table; log, evaluate and snapshot; until the last step or Ctrl-C."""
    q, episode_return = tables["q"], 0.0
    clock, averages = Stopwatch(p.train_seconds), Averages()
    with StopSignals() as stop, tqdm(total=args.steps, initial=p.step, desc="train", unit="step", smoothing=0.05,
                                 mininterval=1, disable=None) as bar:  # no bar where stderr is not a terminal
        try:
            while p.step < args.steps and not stop.received:
                p.step += 1
                fraction = p.step / args.steps
                epsilon = linear(args.epsilon_start, args.epsilon_end, p.step / max(args.epsilon_steps, 1))
                action = epsilon_greedy(q_row(q, obs), epsilon, rng)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                error = td_update(q, obs, action, reward, next_obs, terminated,
                                  linear(args.lr, args.lr_end, fraction), args.gamma)
                averages.add(td_error=abs(error))
                episode_return += reward
                obs = next_obs
                if terminated or truncated:
                    p.episode += 1
                    log.scalar("episode/return", episode_return, p.step)
                    averages.add(episode_return=episode_return)
                    (obs, _), episode_return = env.reset(), 0.0

                if p.step % args.log_every == 0:
                    visited = (q != args.q_init / args.tilings).any(axis=1).mean()
                    log_progress(log, p, averages, epsilon, visited, bar)
                if args.eval_every and p.step % args.eval_every == 0:
                    mean = float(evaluate(eval_env, q, args.eval_episodes).mean())
                    log.scalar("eval/mean_return", mean, p.step)
                    if record_evaluation(p, mean, eval_env.spec.reward_threshold, clock(), args.keep_best):
                        tables["best"] = q.copy()
                if p.step % args.snapshot_every == 0:
                    save_table(q, run_dir / f"step_{p.step}.npy", args.tilings)
                    save_checkpoint(run_dir, dataclasses.replace(p, train_seconds=clock()), rng, tables)
                if p.step % 100 == 0:
                    bar.update(100)
        finally:
            p.train_seconds = clock()
    return "interrupted" if stop.received else "finished"


def log_progress(log: TensorBoardLogger, p: Progress, averages: Averages, epsilon: float, visited: float,
                 bar: tqdm) -> None:
    """The scalars averaged since the last log line, to TensorBoard and as one line; `visited`: the
    fraction of cells learned from so far (the others still hold --q-init)."""
    means, sps = averages.take(), log.steps_per_second(p.step)
    for tag, value in {"train/td_error": means["td_error"], "train/epsilon": epsilon, "perf/steps_per_second": sps,
                       "train/cells_visited": visited}.items():
        log.scalar(tag, value, p.step)
    bar.write(f"episode {p.episode:6d}  step {p.step:8d}  |td| {shown(means.get('td_error'), 7, 4)}  "
              f"return {shown(means.get('episode_return'), 7, 1)}  epsilon {epsilon:.3f}  {sps:6.0f} steps/s")


def finish(args: argparse.Namespace, tables: dict, p: Progress, status: str, eval_env: gym.Env, run_dir: Path,
           log: TensorBoardLogger) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A stopped run: a step_N.npy to play. A finished one: last.npy, final.npy (the table of the
    best periodic evaluation, --keep-best) and their evaluations."""
    if status != "finished":
        save_table(tables["q"], run_dir / f"step_{p.step}.npy", args.tilings)
        return None, None
    save_table(tables["q"], run_dir / "last.npy", args.tilings)
    best = tables.get("best", tables["q"])
    save_table(best, run_dir / "final.npy", args.tilings)
    episodes, seed = args.final_eval_episodes, final_eval_seed(args.seed)  # the same start states for both
    if not episodes:
        return None, None
    last_returns = evaluate(eval_env, tables["q"], episodes, seed)
    final_returns = last_returns if best is tables["q"] else evaluate(eval_env, best, episodes, seed)
    log.scalar("eval/final_mean_return", final_returns.mean(), p.step)
    return final_returns, last_returns


# ------------------------------------------------------------------------ playing


def play(args: argparse.Namespace) -> None:
    """--model TABLE.npy with --view, --eval, --video and/or --gif."""
    env = play_env(args.env, args.view, args.video, args.gif, args.gif_steps)
    q, bins, tilings = load_table(args.model, env)
    play_saved(args, make_table_env(args.env, bins, tilings, env), lambda s: int(np.argmax(q_row(q, s))))


def load_table(path: str, env: gym.Env) -> tuple[np.ndarray, int, int]:
    """A saved table that fits `env`, as (rows, actions), with its --bins and --tilings; or a one-line error."""
    try:
        q = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        fail(f"{path} is not a saved table ({type(e).__name__}); pass a .npy file written by tabular.py, "
             "such as runs/<name>/final.npy")
    q = q[None] if q.ndim == 2 else q  # a plain table saved as (cells, actions)
    bins = table_bins(q, env) if q.ndim == 3 else None
    if bins is None or q.shape[2] != env.action_space.n:
        fail(f"{path} holds an array of shape {q.shape}, not a table for {env.spec.id} ({env.action_space.n} "
             f"actions, bins^{env.observation_space.shape[0]} cells per grid); pass the --env it was trained on")
    return q.reshape(-1, q.shape[2]), bins, q.shape[0]


def table_bins(q: np.ndarray, env: gym.Env) -> int | None:
    """The --bins a (tilings, cells, actions) table was trained with, from its cells per grid, or None."""
    dims, tilings = env.observation_space.shape[0], q.shape[0]
    per_dim = round(q.shape[1] ** (1 / dims))
    bins = per_dim - (tilings > 1)
    return bins if per_dim**dims == q.shape[1] and bins >= 1 else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "tabular")
    if args.model:
        play(args)
        return 0
    if not args.resume:  # fail on an env without a table before anything is written (a resumed run's was checked)
        make_table_env(args.env, args.bins, args.tilings).close()
    return train_and_report(args, "tabular", train)


if __name__ == "__main__":
    sys.exit(main())
