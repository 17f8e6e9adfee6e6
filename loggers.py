"""Logging: TensorBoard scalars (and one text table of settings), the averages that go into each
log line, and the steps per second between them.

Open the curves with `tensorboard --logdir runs`. The event files are written with tensorboardX,
which needs no TensorFlow, so the numpy-only tabular.py logs exactly as the networks do; tools
that parse them find the values under TensorBoard's "scalars" tags.
"""

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import psutil
from tensorboardX import SummaryWriter
from tqdm import tqdm


class TensorBoardLogger:
    def __init__(self, logdir: str | Path, settings: dict | None = None, step: int = 0):
        """Event files in `logdir`; a new run's `settings` (its flags) go in as a table, so that they
        travel with the curves. `step`: where the run starts (a resumed one), for `steps_per_second`."""
        self.writer = SummaryWriter(str(logdir))
        self.pending, self.handed = [], time.perf_counter()
        self.since = (step, time.perf_counter())
        if settings is not None:
            self.settings(settings)

    def steps_per_second(self, step: int) -> float:
        """Since the last call (or the start)."""
        (before, then), now = self.since, time.perf_counter()
        self.since = (step, now)
        return (step - before) / (now - then)

    def scalar(self, tag: str, value: float, step: int) -> None:
        # The writer's own thread writes the events; handing them over once a second instead of one by
        # one keeps that thread from waking, and taking Python's lock from the training, on every episode.
        self.pending.append((tag, float(value), step, time.time()))
        if time.perf_counter() - self.handed > 1.0:
            self.hand_over()

    def hand_over(self) -> None:
        for tag, value, step, walltime in self.pending:
            self.writer.add_scalar(tag, value, step, walltime)
        self.pending, self.handed = [], time.perf_counter()

    def settings(self, flags: dict) -> None:
        """The run's settings as a table in TensorBoard's Text tab."""
        rows = "\n".join(f"| {k} | {v} |" for k, v in flags.items())
        self.writer.add_text("settings", "| flag | value |\n|---|---|\n" + rows, 0)

    def close(self) -> None:
        """Flush everything to disk; call on every exit path so no logged point is lost."""
        self.hand_over()
        self.writer.flush()
        self.writer.close()


class Averages(defaultdict):
    """Values gathered between two log lines, by name: `averages["loss"].append(x)` (a plain list, so
    the training adds to it without a call here) or `averages.add(loss=x)`; `take()` gives their means
    and starts over. A name with no values averages to NaN (not logged); `.get(name)` gives None."""

    def __init__(self):
        super().__init__(list)

    def add(self, **values: float) -> None:
        for name, value in values.items():
            self[name].append(value)

    def take(self) -> defaultdict:
        means = defaultdict(lambda: float("nan"), {name: float(np.mean(v)) for name, v in self.items() if v})
        self.clear()
        return means


def log_episode(log: TensorBoardLogger, episode: dict, step: int) -> float:
    """Log an ended episode's return and length (Gymnasium's RecordEpisodeStatistics' info["episode"]
    for one env: "r" and "l"); return the return."""
    log.scalar("episode/return", episode["r"], step)
    log.scalar("episode/length", episode["l"], step)
    return float(episode["r"])


def log_training(log: TensorBoardLogger, state, averages: Averages, scalars: dict[str, float | None],
                 last_return: float | None) -> None:
    """DQN's training curves (docs/algorithm.md lists every tag) to TensorBoard: the averages since the
    last log line as train/NAME, `scalars` (None: a setting that is off), the distance between the
    online and target weights, the speed and the memory; and one line under the progress bar."""
    p = state.progress
    means = {f"train/{name}": value for name, value in averages.take().items()}
    rss = psutil.Process().memory_info().rss / 2**20
    scalars = {**means, **scalars, "train/target_distance": weight_distance(state.model, state.target),
               "perf/steps_per_second": log.steps_per_second(p.step), "perf/rss_mb": rss}
    for tag, value in scalars.items():
        if value is not None:
            log.scalar(tag, value, p.step)
    tqdm.write(f"episode {p.episode:5d}  step {p.step:7d}  loss {shown(means.get('train/loss'), 8, 4)}  "
               f"return {shown(last_return, 7, 1)}  epsilon {scalars['train/epsilon']:.3f}  "
               f"{scalars['perf/steps_per_second']:6.0f} steps/s  {rss:4.0f} MiB")


def shown(value: float | None, width: int, decimals: int) -> str:
    """A number for the log line, or "-" for None, where there is none yet: no gradient step taken or no
    episode ended since the run started or resumed. A NaN still prints as nan: it means a diverged run."""
    return "-".rjust(width) if value is None else f"{value:{width}.{decimals}f}"


def weight_distance(model, target) -> float:
    """Mean |online - target| weight difference (train/target_distance): a sawtooth with hard target
    copies, smooth with Polyak averaging."""
    return float(np.mean([np.abs(w - t).mean() for w, t in zip(model.get_weights(), target.get_weights(),
                                                                strict=True)]))
