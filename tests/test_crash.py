"""Fault injection: real trainings killed with SIGKILL, at random instants and inside each file
of a snapshot write, then resumed. Whatever the instant, --resume must continue from the last
checkpoint the run reported complete, with the same step, epsilon and replay contents, or (only
when no checkpoint was complete yet) refuse in one line; never a traceback, never a lost state.

Each kill is preceded by SIGSTOP, so that the test reads what the frozen process had reported
("saved ... checkpoint at step N") and what is on disk at the very instant of the kill.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, checkpoint_state

pytestmark = pytest.mark.slow

# CartPole, a snapshot and a log line every 200 steps: many writes to land in, and at every
# checkpoint a log line that shows the epsilon of that step.
FLAGS = ["--env", "CartPole-v1", "--learning-starts", "200", "--snapshot-every", "200", "--log-every", "200",
         "--eval-every", "2000", "--eval-episodes", "2", "--final-eval-episodes", "2", "--name", "k"]
SAVED = re.compile(r"saved step_\d+\.keras and the checkpoint at step (\d+) \((\d+) transitions\)")
LOGGED = re.compile(r"step +(\d+) .* epsilon (\d\.\d+)")
RESUMING = re.compile(r"resuming \S+ at step (\d+): epsilon (\d\.\d+), (\d+) transitions in replay")


class Training:
    """One run.py process of the run runs/k in `cwd`, its output in a file of its own."""

    def __init__(self, cwd, args: list[str], pause_before_rename: str | None = None):
        self.log = cwd / f"process-{len(list(cwd.glob('process-*')))}.log"
        env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "PYTHONUNBUFFERED": "1"}
        if pause_before_rename:
            env["DQN_PAUSE_BEFORE_RENAME"] = pause_before_rename
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stopped(self) -> bool:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"

    def wait_until(self, condition, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while not condition() and self.proc.poll() is None:
            assert time.time() < deadline, self.output()[-2000:]
            time.sleep(0.02)

    def freeze_and_kill(self) -> bool:
        """SIGSTOP, let the test look (returns whether the process was still running), SIGKILL."""
        if self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.wait_until(self.stopped, timeout=10)
        return True

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def reported_checkpoints(text: str) -> dict[int, int]:
    """Step -> replay size of every checkpoint a process reported complete."""
    return {int(step): int(size) for step, size in SAVED.findall(text)}


def check_resumed_where_it_stopped(process: Training, last: tuple[int, int], epsilons: dict[int, str]) -> bool:
    """If `process` got as far as saying where it resumed: the step and replay size of the last
    reported checkpoint, and the epsilon the killed process logged at that step."""
    found = RESUMING.search(process.output())
    if not found:
        return False
    step, epsilon, size = int(found[1]), found[2], int(found[3])
    assert (step, size) == last, (found[0], last)
    assert epsilon == epsilons[step], (found[0], epsilons[step])
    return True


def on_disk(run_dir) -> tuple[int, int] | None:
    """Step and replay size of the checkpoint on disk, if there is one."""
    if not (run_dir / "checkpoint.npz").exists():
        return None
    with np.load(run_dir / "checkpoint.npz") as saved:
        return checkpoint_state(run_dir)["step"], len(saved["replay/action"])


KILLS = 5


def test_random_kills_then_resume_lose_nothing(tmp_path):
    """5 kills at random instants (a fixed random sequence), each followed by --resume."""
    rng, run_dir = random.Random(0), tmp_path / "runs" / "k"
    last, epsilons, counts = None, {}, dict(kills=0, inside_a_write=0, resumes_verified=0, refusals=0)
    for _ in range(KILLS):
        if run_dir.exists() and last is None:  # killed before its first checkpoint: nothing to resume
            r = subprocess.run([sys.executable, str(ROOT / "run.py"), "--resume", str(run_dir)], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and "no complete checkpoint yet" in lines[0], r.stderr
            counts["refusals"] += 1
            shutil.rmtree(run_dir)  # and the user starts it again
        process = Training(tmp_path, ["--resume", str(run_dir)] if run_dir.exists() else ["--steps", "12000", *FLAGS])
        if rng.random() < 0.25:  # sometimes during start-up (TensorFlow import, loading the checkpoint)
            time.sleep(rng.uniform(0, 5))
        else:  # mostly while training: a random instant after the first checkpoint of this process
            process.wait_until(lambda p=process: SAVED.search(p.output()))
            time.sleep(rng.uniform(0, 1.0))
        assert process.freeze_and_kill(), "finished before the kill: " + process.output()[-500:]
        text = process.output()
        counts["inside_a_write"] += bool(list(run_dir.glob(".tmp-*")))
        counts["resumes_verified"] += check_resumed_where_it_stopped(process, last, epsilons) if last else 0
        reported = max(reported_checkpoints(text).items(), default=last)
        epsilons.update({int(s): e for s, e in LOGGED.findall(text)})
        disk = on_disk(run_dir)
        # On disk at the instant of the kill: the last checkpoint reported, or the next one if the
        # kill fell between its rename and the line that reports it. Either way nothing is lost.
        assert disk == reported or (disk and disk[0] == (reported[0] if reported else 0) + 200), (disk, reported)
        last = disk
        process.kill()
        counts["kills"] += 1
        assert "Traceback" not in text, text[-3000:]
    final = Training(tmp_path, ["--resume", str(run_dir)])
    assert final.proc.wait(timeout=300) == 0, final.output()[-3000:]
    assert check_resumed_where_it_stopped(final, last, epsilons)
    counts["resumes_verified"] += 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 12000 and not list(run_dir.glob(".tmp-*"))
    print(counts)
    assert counts["kills"] == KILLS and counts["resumes_verified"] >= 3


# The files of a run's writes in the order they are written, each with what must hold while the
# process is paused inside it (its temporary file complete, not yet renamed over the real one).
WRITES = [
    ("step_600.keras", lambda run_dir: not (run_dir / "step_600.keras").exists()),
    ("checkpoint.npz", lambda run_dir: (run_dir / "step_600.keras").exists()),  # after the snapshot
    ("last.keras", lambda run_dir: not (run_dir / "last.keras").exists()),
    ("final.keras", lambda run_dir: (run_dir / "last.keras").exists() and not (run_dir / "final.keras").exists()),
    ("summary.json", lambda run_dir: (run_dir / "final.keras").exists() and not (run_dir / "summary.json").exists()),
]


def test_a_kill_inside_each_file_of_the_write_keeps_the_previous_complete_state(tmp_path):
    """For each file in turn, a process stops itself when the temporary file of that one is complete
    but not renamed (atomic.pause_for_tests) and is killed there: the real file is still the old one
    (or absent), and the next --resume continues from the last complete checkpoint. The first is the
    new run itself, inside its third snapshot; the last --resume finishes the run."""
    run_dir = tmp_path / "runs" / "k"
    for i, (name, then) in enumerate(WRITES):
        before = checkpoint_state(run_dir)["step"] if i else 400  # the new run has saved 200 and 400
        paused = Training(tmp_path, ["--resume", str(run_dir)] if i else ["--steps", "1000", *FLAGS],
                          pause_before_rename=name)
        paused.wait_until(paused.stopped)
        assert paused.proc.poll() is None, paused.output()[-2000:]  # paused inside the write, not finished
        assert not i or RESUMING.search(paused.output())[1] == str(before)
        assert (run_dir / f".tmp-{name}").is_file() and then(run_dir), name
        paused.kill()
        on_disk_now = checkpoint_state(run_dir)["step"]  # readable: the checkpoint on disk is complete
        assert on_disk_now == before if name.startswith(("step_", "checkpoint")) else on_disk_now >= before
    final = Training(tmp_path, ["--resume", str(run_dir)])
    assert final.proc.wait(timeout=300) == 0, final.output()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 1000 and not list(run_dir.glob(".tmp-*"))
    import keras

    keras.models.load_model(run_dir / "final.keras")
