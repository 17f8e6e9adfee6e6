"""Logging: TensorBoard scalars (and one text table of settings), and the averages that go into
each log line.

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


class TensorBoardLogger:
    def __init__(self, logdir: str | Path, settings: dict | None = None):
        """Event files in `logdir`; a new run's `settings` (its flags) go in as a table, so that they
        travel with the curves."""
        self.writer = SummaryWriter(str(logdir))
        self.pending, self.handed = [], time.perf_counter()
        if settings is not None:
            self.settings(settings)

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


class Averages:
    """Values gathered between two log lines (a loss per training call, ...) and the steps per
    second since the last line; a name with no values averages to NaN (not logged)."""

    def __init__(self, step: int):
        self.values, self.step, self.time = defaultdict(list), step, time.perf_counter()

    def add(self, **values: float) -> None:
        for name, value in values.items():
            self.values[name].append(value)

    def take(self, step: int) -> tuple[defaultdict, float]:
        """The means since the last call, and steps per second; then start over."""
        now = time.perf_counter()
        means = defaultdict(lambda: float("nan"), {k: float(np.mean(v)) for k, v in self.values.items()})
        rate = (step - self.step) / (now - self.time)
        self.values, self.step, self.time = defaultdict(list), step, now
        return means, rate


def log_episodes(log: TensorBoardLogger, info: dict, step: int) -> list[float]:
    """Log the return and length of each game that ended in this step of a vector env (Gymnasium's
    info["episode"] and info["_episode"]); return those returns."""
    ended = np.flatnonzero(info["_episode"])
    for env in ended:
        log.scalar("episode/return", info["episode"]["r"][env], step)
        log.scalar("episode/length", info["episode"]["l"][env], step)
    return [float(info["episode"]["r"][env]) for env in ended]


def log_training(log: TensorBoardLogger, bar, progress, averages: Averages, last_return: float,
                 scalars: dict[str, float]) -> None:
    """The averages since the last log line (as train/NAME), `scalars`, the speed and the memory, to
    TensorBoard; and one line under the progress bar. NaN values (no loss before learning starts, a
    setting that is off) are left out."""
    means, sps = averages.take(progress.step)
    rss = psutil.Process().memory_info().rss / 2**20
    scalars = {**{f"train/{name}": value for name, value in means.items()}, **scalars,
               "perf/steps_per_second": sps, "perf/rss_mb": rss}
    for tag, value in scalars.items():
        if np.isfinite(value):
            log.scalar(tag, value, progress.step)
    epsilon = f"  epsilon {scalars['train/epsilon']:.3f}" if "train/epsilon" in scalars else ""
    bar.write(f"episode {progress.episode:5d}  step {progress.step:7d}  loss {means['loss']:8.4f}  "
              f"return {last_return:7.1f}{epsilon}  {sps:6.0f} steps/s  {rss:4.0f} MiB")


def weight_distance(model, target) -> float:
    """Mean |online - target| weight difference (train/target_distance): a sawtooth with hard target
    copies, smooth with Polyak averaging."""
    return float(np.mean([np.abs(w - t).mean() for w, t in zip(model.get_weights(), target.get_weights(),
                                                                strict=True)]))
