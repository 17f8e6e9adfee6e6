"""Logging: TensorBoard scalars (and one text table of settings) written with tf.summary, and
the averages that go into each log line.

Open the curves with `tensorboard --logdir runs`. TensorBoard reads tf.summary scalars back
as tensors, so tools that parse the event files should look under the "tensors" tags.
"""

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import tensorflow as tf


class TensorBoardLogger:
    def __init__(self, logdir: str | Path):
        self.writer = tf.summary.create_file_writer(str(logdir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self.writer.as_default():
            tf.summary.scalar(tag, float(value), step=step)

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        with self.writer.as_default():
            tf.summary.text(tag, markdown, step=step)

    def close(self) -> None:
        """Flush everything to disk; call on every exit path so no logged point is lost."""
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
