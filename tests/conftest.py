"""Shared helpers: the repo on sys.path, headless rendering, running the real scripts, and
training in this process (run.main, as `python run.py` calls it, without a new TensorFlow import).

`pytest -m "not slow"` is the quick loop while editing; the slow tests are those that need real
processes killed or interrupted, an X server, a Ray cluster, a private filesystem, a training from pixels
or a learning check of several seconds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT))
os.environ["SDL_VIDEODRIVER"] = "dummy"  # in-process playing renders without a screen (test_watching.py has one)
from plumbing.startup import load_tensorflow  # noqa: E402

# Test files whose code never needs TensorFlow; run alone (`pytest tests/test_replay_buffer.py`),
# they start without loading it.
WITHOUT_TENSORFLOW = {"test_replay_buffer.py", "test_frame_replay.py", "test_settings.py", "test_tabular.py",
                      "test_bench.py", "test_ray_cluster.py", "test_notebook.py", "test_speed_tool.py"}


def pytest_collectstart(collector):
    """Before a test file that needs TensorFlow is imported: load it as the scripts do (the same
    defaults, no start-up noise), with one thread, as run.py's --threads default, so that in-process
    trainings get the numerics of `python run.py`. Threads can only be set before the first operation."""
    needs = isinstance(collector, pytest.Module) and collector.path.name not in WITHOUT_TENSORFLOW
    if needs and "tensorflow" not in sys.modules:
        tf = load_tensorflow()
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def script(name: str, *args, cwd: Path, timeout: float = 300, env: dict | None = None,
           **popen) -> subprocess.CompletedProcess:
    """Run one of the repo's scripts as a user would, in `cwd`, rendering without a screen. `env`
    adds variables to the environment, or removes those given as None."""
    full = {**os.environ, "SDL_VIDEODRIVER": "dummy", **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}  # captured, unless given
    return subprocess.run([sys.executable, str(ROOT / name), *map(str, args)], cwd=cwd, text=True, timeout=timeout,
                          env=full, **streams)


def imported_modules(r: subprocess.CompletedProcess) -> set[str]:
    """The modules a process run with PYTHONPROFILEIMPORTTIME=1 imported; their lines are taken out of its stderr."""
    lines = r.stderr.splitlines()
    r.stderr = "\n".join(line for line in lines if not line.startswith("import time:"))
    return {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}


def one_line_exit_2(r: subprocess.CompletedProcess, name: str) -> str:
    """A script's process must have exited 2 with one line on stderr, `NAME: error: ...`; returns it."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{name}: error: "), r.stderr
    return lines[0]


def run_main(*args) -> int:
    """run.py's main in this process: its exit code (2 for a one-line error, which goes to stderr)."""
    import run

    try:
        return run.main([str(a) for a in args])
    except SystemExit as e:
        return e.code


# A short MountainCar training: 3000 steps with evaluations at 1000, 2000 and 3000 and a snapshot at 2000.
SHORT = ["--steps", "3000", "--learning-starts", "500", "--eval-every", "1000", "--eval-episodes", "2",
         "--final-eval-episodes", "3", "--snapshot-every", "2000"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One short real MountainCar training shared by the tests that need a run directory."""
    logdir = tmp_path_factory.mktemp("trained") / "runs"
    assert run_main(*SHORT, "--logdir", logdir, "--name", "short") == 0
    return logdir / "short"


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def checkpoint_state(run_dir: Path) -> dict:
    """The counters saved in a run's checkpoint.npz (its step, episodes, evaluations, ...)."""
    with np.load(run_dir / "checkpoint.npz") as saved:
        return json.loads(str(saved["state"]))


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run's TensorBoard event files, as TensorBoard's own reader gives them
    back: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ------------------------------------------------------------------ two code paths, one network
# Two code paths for one network (numpy and Keras, eager and compiled, Keras and ONNX or LiteRT, one
# observation or a batch) add the same products in another order, with kernels that each CPU picks for
# itself (oneDNN, XLA, BLAS). They agree to a few float32 roundings of the largest numbers involved, not
# of each result: a Q-value near 0 can differ by more than its own size, and one near -54 by three ulps
# (1.1e-5, seen on an AMD Zen 5). So the tolerance is relative to the largest |value| compared: 1e-5 of
# it is ~80 ulps, 3.5 times the largest difference these tests saw (2.8e-6 of it, Zen 5 with AVX2
# kernels), and far below what a wrong weight, layer or mask gives (differences of the values' own
# size). Tests that compare two paths are marked `numerics`; CI runs them again with the instruction
# set capped at AVX2 (.ci/run).
ACROSS_PATHS = 1e-5


def assert_close_across_paths(got, expected, rel: float = ACROSS_PATHS) -> None:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=rel * np.abs(expected).max())


def assert_same_greedy_actions(actions, expected_q, rel: float = ACROSS_PATHS, decisive: float = 0.9) -> None:
    """`actions` are argmax_a of `expected_q` wherever its top two values are further apart than two
    paths can differ (twice the tolerance above); at a closer near-tie either action is right, and
    the two paths may pick differently. At least a `decisive` share of the rows must be checked."""
    expected_q = np.asarray(expected_q, np.float64)
    top_two = np.sort(expected_q, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 2 * rel * np.abs(expected_q).max()
    assert clear.mean() >= decisive, f"only {clear.sum()} of {len(clear)} states have a clear greedy action"
    np.testing.assert_array_equal(np.asarray(actions)[clear], expected_q.argmax(axis=1)[clear])
