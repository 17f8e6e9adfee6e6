"""Shared helpers: the repo on sys.path, headless rendering, and running the real scripts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from startup import load_tensorflow  # noqa: E402

load_tensorflow()  # as the scripts do, before any test imports Keras: the same defaults, no start-up noise


def script(name: str, *args, cwd: Path, timeout: float = 300, env: dict | None = None,
           **popen) -> subprocess.CompletedProcess:
    """Run one of the repo's scripts as a user would, in `cwd`, rendering without a screen (the
    window itself is tested on a real X server in test_window.py). `env` adds variables to the
    environment, or removes those given as None."""
    full = {**os.environ, "SDL_VIDEODRIVER": "dummy", **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run([sys.executable, str(ROOT / name), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full, **popen)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One short real MountainCar training shared by the tests that need a run directory."""
    cwd = tmp_path_factory.mktemp("trained")
    r = script("run.py", "--steps", "3000", "--learning-starts", "500", "--eval-every", "1000",
               "--eval-episodes", "2", "--final-eval-episodes", "3", "--snapshot-every", "2000",
               "--name", "short", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return cwd / "runs" / "short"


def checkpoint_state(run_dir: Path) -> dict:
    """The counters saved in a run's checkpoint.npz (its step, episodes, evaluations, ...)."""
    import json

    import numpy as np

    with np.load(run_dir / "checkpoint.npz") as saved:
        return json.loads(str(saved["state"]))


def scalar_tags(run_dir: Path) -> set[str]:
    """The tags of the scalars (stored as tensors by tf.summary) in a run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})  # 0: keep every point
    acc.Reload()
    return set(acc.Tags()["tensors"])
