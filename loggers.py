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
from tensorboardX import SummaryWriter


class TensorBoardLogger:
    def __init__(self, logdir: str | Path):
        self.writer = SummaryWriter(str(logdir))
        self.pending, self.handed = [], time.perf_counter()

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
