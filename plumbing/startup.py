"""Starting the native libraries the same way on every machine, without their start-up noise.

On CPUs with AVX-512 (VNNI, BF16, AMX) TensorFlow 2.21 switches oneDNN's custom operations on
by default; elsewhere they are off. They change the numbers a seed gives (float round-off in
another order) and, at import, write four lines to stderr that TF_CPP_MIN_LOG_LEVEL does not
silence, because C++ writes them before logging is set up. Ray's C++ client likewise writes a
warning per second while it retries a cluster it cannot join. So the scripts load TensorFlow
with `load_tensorflow()` (before Keras, which loads it too) and join Ray under `quiet_stderr`.
"""

import contextlib
import os
import re
import sys
import tempfile
import types
from collections.abc import Iterator

from plumbing.settings import learns_from_pixels

# oneDNN off unless the user says otherwise (TF_ENABLE_ONEDNN_OPTS=1): the same numbers for a
# seed on every x86-64 CPU; docs/results.md compares the speeds on this project's dense networks.
ONEDNN_DEFAULT = "0"

# The lines TensorFlow writes at import whatever the log level; anything else it writes (an
# error, a warning about a bad setting) still shows.
TENSORFLOW_NOISE = re.compile(r"All log messages before absl::InitializeLog\(\) is called"
                              r"|oneDNN custom operations are on")


@contextlib.contextmanager
def quiet_stderr(noise: re.Pattern) -> Iterator[None]:
    """Hold back what anything, C++ included, writes to the stderr file descriptor inside the
    block, then pass on every line that `noise` does not match."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not noise.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def load_tensorflow() -> types.ModuleType:
    """Import TensorFlow with this project's defaults (a value already set in the environment
    wins) and without its start-up noise; return the module."""
    if not os.environ.get("TF_ENABLE_ONEDNN_OPTS"):  # unset or empty: TensorFlow would pick per CPU
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = ONEDNN_DEFAULT
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # no CUDA probing or other INFO lines
    with quiet_stderr(TENSORFLOW_NOISE):
        import tensorflow
    return tensorflow


def prepare_for(args) -> None:
    """What a training or playing process sets before TensorFlow loads, once its flags are known."""
    if learns_from_pixels(args):
        # oneDNN's convolutions make the conv net's update faster (docs/atari.md); dense nets keep the
        # project's default (off: the same numbers on every CPU). A value set by the user wins.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    # Keras imports pandas whenever it is installed (Ray Tune, used by bench.py, brings it) only to
    # accept DataFrames, which we never pass; marked absent, it costs no memory (docs/results.md).
    sys.modules.setdefault("pandas", None)


def use_threads(tf: types.ModuleType, n: int) -> None:
    """TensorFlow's thread pools. They can only be set before its first operation: here, in a
    fresh process; a process that set them already (the tests, training in process) keeps them."""
    if tf.config.threading.get_intra_op_parallelism_threads() != n:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(n)
        except RuntimeError:  # TensorFlow has run an operation in this process already: its pools stay
            pass
