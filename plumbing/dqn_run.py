"""The plumbing of a DQN training behind one object, so that run.py's and atari.py's loops hold
the algorithm and call it once per periodic task: the run's TensorBoard logger, Ctrl-C and SIGTERM,
the progress bar, step_N.keras snapshots with the checkpoint --resume starts from (the TrainingState
below, array by array), the best evaluated weights (--keep-best) and the end of the run (last.keras,
final.keras, their evaluations, summary.json).
"""

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from frame_replay import FrameReplayBuffer
from loggers import TensorBoardLogger
from plumbing import bookkeeping
from plumbing.atomic import remove_leftovers
from plumbing.bookkeeping import Progress, StopSignals, Stopwatch, listed, numbered, record_evaluation
from plumbing.keras_files import optimizer_variables, restore_optimizer, save_model
from plumbing.settings import final_eval_seed
from plumbing.system import native_bfloat16
from replay_buffer import ReplayBuffer


@dataclass
class TrainingState:
    """Everything a DQN run has learned so far; the checkpoint saves exactly this and --resume loads it."""
    model: keras.Model  # the online Q-network, with its optimizer
    target: keras.Model
    replay: ReplayBuffer | FrameReplayBuffer
    rng: np.random.Generator  # exploration and replay sampling
    progress: Progress
    validation_obs: np.ndarray | None = None  # fixed states for the average-max-Q curve, drawn when learning starts
    best_weights: list | None = None  # the weights of the best periodic evaluation so far (--keep-best)


class Run:
    """`with run:` around a training loop. Before it: the replay's size printed, a --resume's
    checkpoint loaded into `state`, the logger `run.log` opened; inside it, `run.stopping` turns
    true at Ctrl-C or SIGTERM (the loop checks it between steps, so a run never stops inside a
    TensorFlow call or half-way through storing a transition); after it, `run.finish`."""

    def __init__(self, args: argparse.Namespace, run_dir: Path, state, resuming: bool,
                 epsilon_at: Callable[[int], float]):
        self.args, self.run_dir, self.state = args, run_dir, state
        emulated = args.precision == "bfloat16" and not native_bfloat16(os.environ)
        network = f"{args.precision}{', emulated on this CPU (slower than float32)' * emulated}"
        replay = f"{args.buffer_size:,} {replay_unit(state.replay)}, {state.replay.nbytes / 2**20:,.0f} MiB"
        print(f"network: {network}; replay: {replay}", flush=True)
        if resuming:
            resume(run_dir, state, epsilon_at)
        self.log = TensorBoardLogger(run_dir, None if resuming else vars(args), state.progress.step)

    def __enter__(self) -> "Run":
        p = self.state.progress
        self.clock, self.signals = Stopwatch(p.train_seconds), StopSignals().__enter__()
        self.bar = tqdm(total=self.args.steps, initial=p.step, desc="train", unit="step", smoothing=0.05,
                        mininterval=1, disable=None)  # no bar where stderr is not a terminal
        self.shown = p.step  # the bar's own count stays put when it is disabled
        return self

    def __exit__(self, *_) -> None:
        self.state.progress.train_seconds = self.clock()
        self.bar.close()
        self.signals.__exit__()

    @property
    def stopping(self) -> bool:
        return self.signals.received

    def tick(self, step: int) -> None:
        """The progress bar, moved on in hundreds of steps."""
        if step - self.shown >= 100:
            self.bar.update(step - self.shown)
            self.shown = step

    def evaluated(self, mean: float, threshold: float | None) -> None:
        """Note a periodic evaluation (and when it first solves the env); keep the best weights (--keep-best)."""
        if record_evaluation(self.state.progress, mean, threshold, self.clock(), self.args.keep_best):
            self.state.best_weights = self.state.model.get_weights()

    def snapshot(self) -> None:
        """A step_N.keras file to play and the checkpoint to resume from, with this moment's timings."""
        state, p = self.state, self.state.progress
        save_model(state.model, self.run_dir / f"step_{p.step}.keras")
        save_checkpoint(self.run_dir, state, dataclasses.replace(p, train_seconds=self.clock()))
        self.bar.write(f"saved step_{p.step}.keras and the checkpoint at step {p.step} ({len(state.replay)} "
                       f"{replay_unit(state.replay)})")

    def finish(self, status: str, eval_env, evaluate: Callable[[int], np.ndarray]) -> dict:
        """Save what the status calls for; after a finished run, evaluate the last and the final weights
        with `evaluate(seed)` (greedy returns of the model's current weights); write summary.json, close
        the evaluation env and the logs. Returns the summary."""
        state = self.state
        final_returns, last_returns = end_files(self.args, state, status, self.run_dir, self.log, evaluate)
        summary = bookkeeping.write_summary(self.run_dir, self.args, state.progress, status, final_returns,
                                            last_returns, eval_env.spec.reward_threshold,
                                            dict(gradient_steps=int(state.model.optimizer.iterations)))
        eval_env.close()
        self.log.close()
        return summary


def save_checkpoint(run_dir: Path, state, progress: Progress | None = None) -> None:
    """The whole TrainingState in one file (bookkeeping.save_checkpoint). `progress` replaces
    state.progress (the counters with this moment's timings)."""
    arrays = {**numbered("online", state.model.get_weights()), **numbered("target", state.target.get_weights()),
              **numbered("adam", [v.numpy() for v in optimizer_variables(state.model)]),
              **numbered("best", state.best_weights or []),
              **{f"replay/{k}": v for k, v in state.replay.arrays().items()}}
    if state.validation_obs is not None:
        arrays["validation_obs"] = state.validation_obs
    bookkeeping.save_checkpoint(run_dir, progress or state.progress, state.rng, arrays)


def load_checkpoint(run_dir: Path, state) -> None:
    """Inverse of save_checkpoint, into the freshly built `state`."""
    def restore(saved) -> None:
        state.model.set_weights(listed(saved, "online"))
        state.target.set_weights(listed(saved, "target"))
        restore_optimizer(state.model, listed(saved, "adam"))
        state.replay.restore({k.removeprefix("replay/"): saved[k] for k in saved.files if k.startswith("replay/")})
        state.validation_obs = saved["validation_obs"] if "validation_obs" in saved.files else None
        state.best_weights = listed(saved, "best") or None

    state.progress = bookkeeping.load_checkpoint(run_dir, state.rng, restore)


def replay_unit(replay) -> str:
    """What the replay counts: Atari's stores frames (stacks are rebuilt when sampled), the others transitions."""
    return "frames" if isinstance(replay, FrameReplayBuffer) else "transitions"


def resume(run_dir: Path, state, epsilon_at: Callable[[int], float]) -> None:
    """--resume: the checkpoint into `state`, leftovers of a write a crash cut short removed."""
    load_checkpoint(run_dir, state)
    remove_leftovers(run_dir)
    step, threads = state.progress.step, tf.config.threading.get_intra_op_parallelism_threads()
    print(f"resuming {run_dir} at step {step}: epsilon {epsilon_at(step):.3f}, {len(state.replay)} "
          f"{replay_unit(state.replay)} in replay, {threads} TensorFlow thread{'s' * (threads > 1)}", flush=True)


def end_files(args: argparse.Namespace, state, status: str, run_dir: Path, log,
              evaluate: Callable[[int], np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The files of the run's end, and the returns of the last and final weights (None: not evaluated)."""
    p = state.progress
    if status in ("diverged", "bad_env_output"):  # keep the last good snapshot: nothing is saved now
        return None, None
    if status == "interrupted":
        save_model(state.model, run_dir / f"step_{p.step}.keras")
    save_checkpoint(run_dir, state)
    if status != "finished":
        return None, None
    save_model(state.model, run_dir / "last.keras")
    episodes, eval_seed = args.final_eval_episodes, final_eval_seed(args.seed)  # same start states for both
    last_returns = evaluate(eval_seed) if episodes else None
    # The best evaluation may have been the last one: then the final weights are the last ones.
    best_is_last = state.best_weights is None or p.best_eval_step == p.step
    if not best_is_last:
        state.model.set_weights(state.best_weights)
    save_model(state.model, run_dir / "final.keras")
    if not episodes:
        return None, None
    final_returns = last_returns if best_is_last else evaluate(eval_seed)
    log.scalar("eval/final_mean_return", final_returns.mean(), p.step)
    return final_returns, last_returns
