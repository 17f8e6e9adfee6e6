"""TensorBoard logging: scalars (and one text table of settings) written with tf.summary.

Open the curves with `tensorboard --logdir runs`. TensorBoard reads tf.summary scalars back
as tensors, so tools that parse the event files should look under the "tensors" tags.
"""

from pathlib import Path

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
