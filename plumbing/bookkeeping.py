"""What every training run shares, whatever the algorithm: its folder (LOGDIR/NAME with the
settings, or a stopped run to --resume), its counters and clocks, the crash-safe checkpoint file,
the bookkeeping of evaluations, Ctrl-C, summary.json and the last lines printed. No TensorFlow
here: tabular.py uses it too.
"""

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from plumbing.atomic import write_atomically, write_text_atomically
from plumbing.envs import make_env
from plumbing.settings import ALGORITHMS, BEFORE_THE_FLAG, fail, learns_from_pixels, make_parser
from plumbing.system import bfloat16_convolutions_fail, cpu_kind, peak_memory_mib

STARTED = time.time()  # wall-clock start (importing this module comes before the slow TensorFlow import)
CHECKPOINT = "checkpoint.npz"


# ------------------------------------------------------------- the run's folder


def prepare_run(args: argparse.Namespace, algo: str) -> tuple[argparse.Namespace, Path, bool]:
    """New run: create LOGDIR/NAME and record the settings. --resume: reload them."""
    if args.resume:
        saved, run_dir = resumable_run(Path(args.resume), algo), Path(args.resume)
        told = getattr(args, "precision", "auto") not in ("auto", getattr(saved, "precision", None))
        if told:  # DQN's --precision, told: from now on, and at the next --resume
            saved.precision = args.precision
        check_precision_runs_here(saved, f"--resume {run_dir} --precision float32")
        if told:
            write_text_atomically(run_dir / "args.json", json.dumps(vars(saved), indent=1))
        return saved, run_dir, True
    check_precision_runs_here(args, "--precision float32")
    make_env(args.env).close()  # fail on a bad env before anything is written
    run_dir = Path(args.logdir) / (args.name or time.strftime("%Y%m%d-%H%M%S"))
    if run_dir.exists():
        fail(f"{run_dir} already exists; choose another --name, or --resume {run_dir}")
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:  # a read-only folder, a --logdir that is a file, ...
        fail(f"cannot create {run_dir} ({e.strerror}); pass a writable folder with --logdir")
    try:
        write_text_atomically(run_dir / "args.json", json.dumps(vars(args), indent=1))
    except OSError as e:  # the disk is full: leave nothing behind
        run_dir.rmdir()
        fail(f"cannot write to {run_dir} ({e.strerror}); free some space or pass another --logdir")
    return args, run_dir, False


def check_precision_runs_here(args: argparse.Namespace, instead: str) -> None:
    """Where oneDNN has no bfloat16 convolution, a bfloat16 conv net would stop at its first update: say so now."""
    if getattr(args, "precision", None) == "bfloat16" and learns_from_pixels(args) and bfloat16_convolutions_fail(
            os.environ):
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
        cap = f"; capped by ONEDNN_MAX_CPU_ISA={cap}" if cap else ""
        fail(f"oneDNN has no bfloat16 convolutions on this CPU ({cpu_kind()}{cap}); use {instead}, or set "
             "TF_ENABLE_ONEDNN_OPTS=0 for TensorFlow's own bfloat16, several times slower")


def resumable_run(run_dir: Path, algo: str) -> argparse.Namespace:
    """The saved settings of a run that --resume can continue, or a one-line error saying why not."""
    script = ALGORITHMS[algo].script
    if not (run_dir / CHECKPOINT).is_file():
        if (run_dir / "resume" / "state.json").is_file():
            fail(f"{run_dir} was written by an older {script} (a resume/ folder, not {CHECKPOINT}) and "
                 "cannot be resumed; start a new run, or play its snapshots with --model")
        if (run_dir / "args.json").is_file():
            fail(f"{run_dir} has no complete checkpoint yet (it stopped before its first snapshot); "
                 "start it again as a new run")
        fail(f"{run_dir} has no resume state; pass a run directory written by {script}, e.g. runs/<name>")
    try:
        # Flags added since the run was written take their behaviour before they existed.
        defaults = vars(make_parser(algo).parse_args([]))
        before = {name: value for name, value in BEFORE_THE_FLAG.items() if name in defaults}
        saved = argparse.Namespace(**{**defaults, **before, **json.loads((run_dir / "args.json").read_text())})
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    except (OSError, ValueError, TypeError) as e:
        fail(f"{run_dir}'s args.json or summary.json is not readable ({e}); start a new run")
    if summary.get("status") == "finished":
        fail(f"{run_dir} already finished its {saved.steps} steps; start a new run instead")
    return saved


# ----------------------------------------------------------------- counters and clocks


@dataclass
class Progress:
    """A run's counters and timings; the checkpoint keeps them as JSON, summary.json reports them."""
    step: int = 0
    episode: int = 0
    train_seconds: float = 0.0  # the training loop's time, evaluations included, over all sessions
    compile_seconds: float = 0.0  # the update's one-time tracing (and XLA compilation of a dense net), per session
    wall_seconds: float = 0.0  # process start to end, over all sessions
    evals: list = field(default_factory=list)  # [step, mean return] of each periodic evaluation
    first_solved_step: int | None = None
    first_solved_seconds: float | None = None
    best_eval_step: int | None = None
    best_eval_mean: float | None = None


class Stopwatch:
    """Seconds of training so far: those of earlier sessions (a resumed run) plus this one's."""

    def __init__(self, before: float):
        self.before, self.start = before, time.perf_counter()

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.start


def wall_seconds(p: Progress) -> float:
    return p.wall_seconds + time.time() - STARTED


def crossed(before: int, now: int, period: int) -> int:
    """How many multiples of `period` the step count passed going from `before` to `now`
    (with one env: 1 exactly when now % period == 0)."""
    return now // period - before // period


def linear(start: float, end: float, fraction: float) -> float:
    """A linear schedule: start at fraction 0, end from fraction 1 on."""
    return start + (end - start) * min(fraction, 1.0)


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (`kill`, a scheduler stopping the job, bench.py's trials when
    bench.py ends) only set `received`, which the loop checks between steps, so a run never stops
    inside a TensorFlow call or half-way through storing a transition. A second Ctrl-C kills;
    once stopping, SIGTERM is ignored until the process ends (one end of bench.py can send several,
    and they would cut the saving short)."""

    def __enter__(self) -> "StopSignals":
        self.received = False
        signal.signal(signal.SIGINT, self.receive)
        signal.signal(signal.SIGTERM, self.receive)
        return self

    def receive(self, signum: int, _) -> None:
        self.received = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)

    def __exit__(self, *_) -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if not self.received:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


# -------------------------------------------------------------------------- checkpoint


def save_checkpoint(run_dir: Path, progress: Progress, rng: np.random.Generator, arrays: dict[str, np.ndarray]) -> None:
    """The counters (with this session's wall time so far), the random generator's state and the
    algorithm's arrays in one file, written atomically (atomic.py), so a crash leaves either the
    previous complete checkpoint or this one."""
    counters = {**dataclasses.asdict(progress), "wall_seconds": wall_seconds(progress), "rng": rng.bit_generator.state}
    counters = np.array(json.dumps(counters))
    write_atomically(run_dir / CHECKPOINT, lambda tmp: np.savez(tmp, state=counters, **arrays))


def numbered(name: str, values: list[np.ndarray]) -> dict[str, np.ndarray]:
    """A list of arrays as checkpoint entries name/0, name/1, ...; `listed` reads them back."""
    return {f"{name}/{i}": v for i, v in enumerate(values)}


def listed(saved, name: str) -> list[np.ndarray]:
    return [saved[f"{name}/{i}"] for i in range(sum(k.startswith(name + "/") for k in saved.files))]


def load_checkpoint(run_dir: Path, rng: np.random.Generator, restore: Callable) -> Progress:
    """Inverse of save_checkpoint: sets the generator's state, calls restore(saved arrays) to put
    the algorithm's arrays back, returns the counters. Any problem with the file is a one-line error."""
    path = run_dir / CHECKPOINT
    try:
        with np.load(path) as saved:
            counters = json.loads(str(saved["state"]))
            rng.bit_generator.state = counters.pop("rng")
            restore(saved)
            return Progress(**counters)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, or another run's: one answer
        fail(f"{path} cannot be resumed ({type(e).__name__}: {e}); start a new run, or play its "
             f"step_N snapshots with --model")


# ------------------------------------------------------------------ evaluations and end


def record_evaluation(p: Progress, mean: float, threshold: float | None, seconds: float, keep_best: bool) -> bool:
    """Note a periodic evaluation's mean return, and when it first reaches the env's threshold
    (`seconds`: the training time so far, evaluations included). Returns whether its weights are
    the best so far, to keep (--keep-best)."""
    p.evals.append([p.step, mean])
    if threshold is not None and mean >= threshold and p.first_solved_step is None:
        p.first_solved_step, p.first_solved_seconds = p.step, round(seconds, 1)
    best = keep_best and (p.best_eval_mean is None or mean >= p.best_eval_mean)
    if best:
        p.best_eval_step, p.best_eval_mean = p.step, mean
    return best


def write_summary(run_dir: Path, args: argparse.Namespace, p: Progress, status: str, final_returns: np.ndarray | None,
                  last_returns: np.ndarray | None, threshold: float | None, extra: dict | None = None) -> dict:
    """summary.json: what bench.py and users read after a run (`extra`: an algorithm's own entries)."""
    p.wall_seconds = wall_seconds(p)
    summary = dict(
        env=args.env, seed=args.seed, status=status, steps=p.step, episodes=p.episode,
        wall_seconds=round(p.wall_seconds, 2), train_seconds=round(p.train_seconds, 2),
        # Training throughput, without the update's one-time tracing and compilation (reported separately).
        steps_per_second=round(p.step / max(p.train_seconds - p.compile_seconds, 1e-9), 1),
        compile_seconds=round(p.compile_seconds, 2),
        final_eval_mean=None, final_eval_std=None, final_eval_episodes=0,
        solved_threshold=threshold, solved=None, first_solved_step=p.first_solved_step,
        first_solved_seconds=p.first_solved_seconds, best_eval_step=p.best_eval_step, best_eval_mean=p.best_eval_mean,
        last_eval_mean=None if last_returns is None else float(last_returns.mean()),
        last_eval_std=None if last_returns is None else float(last_returns.std()),
        peak_rss_mb=round(peak_memory_mib(), 1), cpu=cpu_kind(),  # the last session's, if it was resumed
        evals=p.evals, **(extra or {}))
    if final_returns is not None:
        summary.update(final_eval_mean=float(final_returns.mean()), final_eval_std=float(final_returns.std()),
                       final_eval_episodes=len(final_returns))
        if threshold is not None:
            summary["solved"] = bool(final_returns.mean() >= threshold)
    write_text_atomically(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


def train_and_report(args: argparse.Namespace, algo: str, train: Callable) -> int:
    """A training as its script's main runs it: the run's folder (new, or --resume), then
    train(args, run_dir, resuming) -> summary, then the last lines; returns the exit code."""
    args, run_dir, resuming = prepare_run(args, algo)
    try:
        summary = train(args, run_dir, resuming)
    except OSError as e:  # a full disk or a folder gone read-only: every file written so far is complete
        fail(f"writing to {run_dir} failed ({e.strerror or e}); its last complete checkpoint is kept: "
             f"free some space, then continue with python {ALGORITHMS[algo].script} --resume {run_dir}")
    return report(args, run_dir, summary, algo)


def report(args: argparse.Namespace, run_dir: Path, summary: dict, algo: str) -> int:
    """The run's last lines, and its exit code: 0 finished, 130 interrupted, 1 stopped by a fault."""
    if summary["status"] == "interrupted":
        print(f"interrupted at step {summary['steps']}; snapshot and logs saved in {run_dir}. "
              f"Continue with: python {ALGORITHMS[algo].script} --resume {run_dir}", file=sys.stderr)
        return 130
    if summary["status"] == "diverged":
        print(f"stopped: the loss became non-finite after step {summary['steps']}; earlier snapshots in "
              f"{run_dir} are kept. Try a lower --lr or --clip-norm.", file=sys.stderr)
        return 1
    if summary["status"] == "bad_env_output":
        print(f"stopped: {args.env} returned a non-finite observation or reward at step {summary['steps'] + 1}; "
              f"earlier snapshots in {run_dir} are kept. Check the env.", file=sys.stderr)
        return 1
    if summary["final_eval_mean"] is not None:
        verdict = "" if summary["solved"] is None else f"  solved: {'yes' if summary['solved'] else 'no'}"
        print(f"final eval: {summary['final_eval_mean']:.1f} ± {summary['final_eval_std']:.1f} over "
              f"{summary['final_eval_episodes']} episode{'s' * (summary['final_eval_episodes'] > 1)}{verdict}")
    updates = f" and {summary['gradient_steps']} gradient steps" if "gradient_steps" in summary else ""
    print(f"{summary['steps']} steps{updates} in {summary['wall_seconds']:.0f} s ({summary['steps_per_second']:.0f} "
          f"steps/s while training); saved in {run_dir}")
    return 0
