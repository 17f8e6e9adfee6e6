"""Speed and memory of run.py, each training a `python run.py` process (bench.run_trial).

Throughput:  python tools/speed.py --steps 20000
    trains in the 2018 tutorial's regime (one gradient step on a batch of 64 per env step,
    a 2x32 network), 3 times, and prints the median as its last line: steps_per_second: X.
    In the same run, alternating with it: one compiled call per env step, and every DQN
    variant switched on at once; then it times prioritized-replay sampling in process.
Atari:       python tools/speed.py --atari ALE/Pong-v5 [-- --threads 2]
    where an Atari training's time goes: the games alone (random actions, the preset's envs, the
    trainings' threads, in this process), trainings at the preset's update ratio in float32 and in
    bfloat16, and the update and acting alone in each, alternating, `--repeats` times each; then one
    training per precision in this process with each part of its loop timed (PartTimer). Last
    line: atari_steps_per_second: X (the float32 trainings' median).
Memory:      python tools/speed.py --memory
    peak RSS of MountainCar trainings with a snapshot (a .keras file and the checkpoint)
    every 40 steps over 40,000 steps and every 100 over 120,000; last line: peak_rss_mb: X.
"""

import argparse
import functools
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's scripts and plumbing/

from bench import run_trial  # noqa: E402
from plumbing import settings  # noqa: E402
from plumbing.bookkeeping import prepare_run  # noqa: E402
from plumbing.settings import Parser, fail  # noqa: E402
from plumbing.startup import prepare_for  # noqa: E402
from plumbing.system import bfloat16_convolutions_fail, cpu_kind  # noqa: E402
from replay_buffer import PrioritizedReplayBuffer  # noqa: E402

# The tutorial's regime: 2x32 network, batch 64, one gradient step per env step. Training
# runs every 16 steps with 16 gradient steps per compiled call (same ratio, less overhead).
# Every setting the speed depends on is pinned, so that a change of run.py's defaults does not
# change what this measures.
TUTORIAL_REGIME = ["--units", "32", "--batch-size", "64", "--train-freq", "16", "--gradient-steps", "16",
                   "--learning-starts", "64", "--eval-every", "0", "--final-eval-episodes", "0",
                   "--snapshot-every", "50000", "--plain"]
ALL_VARIANTS = ["--double", "--dueling", "avg", "--prioritized", "--n-step", "3", "--tau", "0.005", "--loss", "huber"]


def memory(root: Path, flags: list[str]) -> None:
    """Peak RSS of long runs that snapshot often: memory that each snapshot leaves behind adds up here."""
    peaks = []
    for steps, every in [(40_000, 40), (120_000, 100)]:
        run_flags = ["--steps", str(steps), "--snapshot-every", str(every), "--final-eval-episodes", "0", *flags]
        trial = dict(name=f"snapshot-every-{every}", config="memory", seed=0, flags=run_flags,
                     run_dir=str((root / f"snapshot-every-{every}").resolve()))
        s = run_trial(trial)
        if s["status"] != "finished":
            fail(f"the memory training {trial['name']} failed: {s['error']}")
        peaks.append(s["peak_rss_mb"])
        print(f"--snapshot-every {every} over {steps} steps ({steps // every} snapshots): peak RSS "
              f"{s['peak_rss_mb']:.0f} MiB in {s['wall_seconds']:.0f} s")
    print(f"peak_rss_mb: {max(peaks):.0f}")


def throughput(root: Path, flags: list[str], repeats: int) -> None:
    """Training steps/s of the batched update, against one call per env step and against all
    variants on. One training at a time (parallel ones would compete for the cores), the three
    alternating, so all see the same machine; medians of `repeats` runs."""
    configs = {"batched (16 updates per call)": [],
               "one call per env step": ["--train-freq", "1", "--gradient-steps", "1"],
               "all variants on": ALL_VARIANTS}
    sps = {name: [] for name in configs}
    with_compile = []
    for r in range(repeats):
        for i, (name, extra) in enumerate(configs.items()):
            trial = dict(name=f"c{i}-{r}", config=name, seed=0, flags=[*TUTORIAL_REGIME, *extra, *flags],
                         run_dir=str((root / f"c{i}-{r}").resolve()))
            s = run_trial(trial)
            if s["status"] != "finished":
                fail(f"the throughput training {trial['name']} failed: {s['error']}")
            sps[name].append(s["steps_per_second"])
            if i == 0:
                with_compile.append(s["steps"] / s["train_seconds"])
    med = {name: statistics.median(x) for name, x in sps.items()}
    base = next(iter(med.values()))
    for name, x in sps.items():
        print(f"{name}: {', '.join(f'{v:.0f}' for v in x)} steps/s, median {med[name]:.0f} "
              f"({med[name] / base:.2f}x the batched plain DQN)")
    print(f"batched, including the one-time XLA compile: {statistics.median(with_compile):.0f} steps/s")
    print(f"one batched gradient update (with its env step) takes {1e6 / base:.0f} us; prioritized replay of "
          "100,000 items, per minibatch of 64:")
    for shape, how in [(64, "one at a time"), ((16, 64), "16 at once, as run.py does")]:
        sample_us, update_us = time_prioritized_sampling(shape)
        print(f"  {how}: sampling {sample_us:.0f} us, updating priorities {update_us:.0f} us")
    print(f"steps_per_second: {base:.0f}")


# A training at full cost from its first steps: the update ratio, batch and envs of the preset, but
# learning from step 1,000 and acting greedily (every env's action from the network) throughout.
ATARI_SPEED = ["--steps", "30000", "--learning-starts", "1000", "--epsilon-start", "0.01", "--epsilon-end", "0.01",
               "--eval-every", "0", "--final-eval-episodes", "0", "--snapshot-every", "1000000"]
PRECISIONS = ["float32", "bfloat16"]


def atari(root: Path, env_id: str, flags: list[str], repeats: int) -> None:
    """Env steps/s of the games alone and of whole trainings in each precision, alternating, with the update
    alone beside them; then one training per precision taken apart, in this process."""
    preset = settings.preset(env_id)
    args = settings.parse_args(["--env", env_id, *flags])
    prepare_for(args)  # oneDNN on, as in an Atari training, before TensorFlow loads
    precisions = ["float32"] if bfloat16_convolutions_fail(os.environ) else PRECISIONS
    if precisions != PRECISIONS:
        print("float32 only: oneDNN has no bfloat16 convolutions on this CPU (it needs AVX-512)", flush=True)
    alone, trained = [], {p: [] for p in precisions}
    update_ms, acting_ms = {p: [] for p in precisions}, {p: [] for p in precisions}
    for r in range(repeats):
        alone.append(time_atari_games(env_id, preset["num_envs"], args.threads))
        for precision in precisions:
            name = f"atari-{precision}-{r}"
            trial = dict(name=name, config="atari", seed=r, run_dir=str((root / name).resolve()),
                         flags=["--env", env_id, *ATARI_SPEED, "--precision", precision, *flags])
            s = run_trial(trial)
            if s["status"] != "finished":
                fail(f"the Atari training {trial['name']} failed: {s['error']}")
            trained[precision].append(s["steps_per_second"])
            update, acting = time_update_and_acting(args, precision, preset["num_envs"])
            update_ms[precision].append(update)
            acting_ms[precision].append(acting)
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    cpu = cpu_kind() + (f", oneDNN capped at {cap}" if cap else "")
    print(f"{env_id}, {preset['num_envs']} games, {args.threads} thread{'s' * (args.threads > 1)}, CPU: {cpu}")
    print(f"  games alone (random actions): {listed(alone)} env steps/s, median {statistics.median(alone):.0f}")
    ratio = preset["train_freq"] / preset["gradient_steps"]
    for name, unit, values in [(f"training (one gradient step per {ratio:g} env steps)", "env steps/s", trained),
                               ("update alone (one gradient step)", "ms", update_ms),
                               (f"acting alone (one forward pass of {preset['num_envs']} frame stacks)", "ms",
                                acting_ms)]:
        medians = {p: statistics.median(v) for p, v in values.items()}
        for p, v in values.items():
            print(f"  {name}, {p}: {listed(v, unit == 'ms')} {unit}, median {medians[p]:.{int(unit == 'ms')}f}")
        if "bfloat16" in medians:
            faster = medians["bfloat16"] / medians["float32"]
            print(f"    bfloat16 is {faster if unit != 'ms' else 1 / faster:.2f}x as fast as float32")
    parts = {p: taken_apart(root, env_id, flags, p) for p in precisions}
    print_parts(parts, preset)
    print(f"atari_steps_per_second: {statistics.median(trained['float32']):.0f}")


def listed(values: list[float], decimal: bool = False) -> str:
    return ", ".join(f"{v:.{int(decimal)}f}" for v in values)


def time_update_and_acting(args: argparse.Namespace, precision: str, games: int,
                           calls: int = 15) -> tuple[float, float]:
    """Milliseconds per gradient step of the preset's compiled update (G steps per call) on random
    minibatches of frames, and per forward pass of `games` frame stacks as acting does it, with a
    network of Pong's 6 actions in `precision`: medians of `calls` calls (10x as many passes) after
    two that compile."""
    import run
    from atari import conv_torso, q_function
    from replay_buffer import Batch

    model, target = (run.create_model((4, 84, 84), 6, args.units, args.lr, args.clip_norm, args.loss, args.dueling,
                                      torso=conv_torso, obs_dtype="uint8", precision=precision) for _ in range(2))
    update, q_values = run.make_update(model, target, args.double, args.tau), q_function(model)
    rng, shape = np.random.default_rng(0), (args.gradient_steps, args.batch_size)
    frames = lambda: rng.integers(0, 256, (*shape, 4, 84, 84), dtype=np.uint8)  # noqa: E731
    batch = Batch(frames(), rng.integers(6, size=shape), rng.standard_normal(shape).astype(np.float32), frames(),
                  np.zeros(shape, np.float32), np.full(shape, args.gamma ** args.n_step, np.float32))
    obs = batch.obs[0, :games]
    updates, passes = [], []
    for _ in range(calls + 2):
        t0 = time.perf_counter()
        float(update(batch)[0])
        updates.append(time.perf_counter() - t0)
    for _ in range(10 * calls + 2):
        t0 = time.perf_counter()
        q_values(obs)
        passes.append(time.perf_counter() - t0)
    return statistics.median(updates[2:]) * 1000 / args.gradient_steps, statistics.median(passes[2:]) * 1000


class PartTimer:
    """Seconds spent in each part of a training, by wrapping the functions that do it. A part's time
    leaves out the parts called inside it (learning's leaves out the replay's sampling), except in an
    `including` part, which keeps all it calls (an evaluation's games are the evaluation's)."""

    def __init__(self):
        self.seconds, self.calls, self.stack = defaultdict(float), defaultdict(int), []

    def wrap(self, part: str, fn: Callable, including: bool = False) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self.stack and self.stack[-1][1]:  # inside an including part
                return fn(*args, **kwargs)
            self.stack.append([0.0, including])  # [time of the parts inside, including]
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - t0
                inner = self.stack.pop()[0]
                self.seconds[part] += seconds - inner
                self.calls[part] += 1
                if self.stack:
                    self.stack[-1][0] += seconds
        return timed


# What each part of an Atari training is, by the functions that do it (module, attribute).
PARTS = {"games (8 env steps)": [("atari", "AtariGames.step")],
         "acting (forward pass)": [("atari", "epsilon_greedy")],
         "replay: storing": [("frame_replay", "FrameReplayBuffer.store")],
         "replay: sampling": [("frame_replay", "FrameReplayBuffer.sample")],
         "update (gradient steps)": [("atari", "learn")],
         "weight copies (target, acting)": [("keras", "Model.get_weights"), ("keras", "Model.set_weights")],
         "logging and progress": [("atari", "log_training"), ("atari", "log_episode"),
                                  ("plumbing.dqn_run", "Run.tick")],
         "evaluation (5 games)": [("atari", "evaluate_periodically")],
         "snapshot": [("plumbing.dqn_run", "Run.snapshot")]}
PERIODIC = {"evaluation (5 games)": "eval_every", "snapshot": "snapshot_every"}
PERIOD = 10_000  # evaluations and snapshots in the taken-apart training, scaled to the preset's periods


def taken_apart(root: Path, env_id: str, flags: list[str], precision: str) -> dict:
    """One training (ATARI_SPEED, with an evaluation and a snapshot every PERIOD steps) in this process, its
    parts timed: seconds per part, the loop's own time as 'rest', and the steps it took."""
    import importlib

    import atari

    timer = PartTimer()
    originals = []
    for part, places in PARTS.items():
        for module, attribute in places:
            owner_name, _, name = attribute.rpartition(".")
            owner = importlib.import_module(module)
            owner = getattr(owner, owner_name) if owner_name else owner
            originals.append((owner, name, getattr(owner, name)))
            setattr(owner, name, timer.wrap(part, getattr(owner, name), including=part in PERIODIC))
    originals.append((atari, "training_loop", atari.training_loop))
    atari.training_loop = timer.wrap("rest", atari.training_loop)
    args = settings.parse_args(["--env", env_id, *ATARI_SPEED, "--precision", precision, "--eval-every", str(PERIOD),
                                "--snapshot-every", str(PERIOD), "--logdir", str(root), "--name", f"parts-{precision}",
                                *flags])
    try:
        args, run_dir, _ = prepare_run(args, "dqn")
        summary = atari.train(args, run_dir, False)
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    timer.seconds["update (gradient steps)"] -= summary["compile_seconds"]  # the one-time tracing, not a step's
    return {**timer.seconds, "steps": summary["steps"]}


def print_parts(parts: dict, preset: dict) -> None:
    """Microseconds per env step of each part, per precision; evaluations and snapshots at the preset's periods."""
    per_step = {}
    for precision, seconds in parts.items():
        steps = seconds["steps"]
        us = {part: seconds.get(part, 0.0) / steps * 1e6 for part in [*PARTS, "rest"]}
        for part, flag in PERIODIC.items():  # the taken-apart run did one every PERIOD steps
            us[part] *= PERIOD / preset[flag]
        per_step[precision] = us
    print(f"one training taken apart ({parts['float32']['steps']:,} steps each, in this process; evaluations and "
          f"snapshots every {PERIOD:,} steps, counted here as at the preset's periods): microseconds per env step")
    width = max(map(len, [*PARTS, "total"]))
    print(f"  {'part':{width}} " + " ".join(f"{p:>18}" for p in parts))
    for part in [*PARTS, "rest", "total"]:
        cells = []
        for us in per_step.values():
            total = sum(us.values())
            value = total if part == "total" else us[part]
            cells.append(f"{value:8.0f} ({value / total:4.0%})")
        print(f"  {part:{width}} " + " ".join(f"{c:>18}" for c in cells))


def time_atari_games(env_id: str, num_envs: int, threads: int, steps: int = 40_000) -> float:
    """Env steps/s of the training games with random actions (no network, no replay)."""
    from atari import AtariGames  # loads TensorFlow (atari.py trains): only for --atari

    games = AtariGames(env_id, num_envs, threads)
    games.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(games.single_action_space.n, size=(steps // num_envs, num_envs))
    t0 = time.perf_counter()
    for a in actions:
        games.step(a)
    seconds = time.perf_counter() - t0
    games.close()
    return len(actions) * num_envs / seconds


def time_prioritized_sampling(shape: int | tuple[int, int], items: int = 100_000,
                              calls: int = 1000) -> tuple[float, float]:
    """Median microseconds per minibatch to sample `shape` (64, or (16, 64) as the training loop
    does) from a full prioritized replay, and to update those priorities."""
    rng = np.random.default_rng(0)
    replay = PrioritizedReplayBuffer(items, (8,))  # LunarLander-sized observations
    replay.size = items  # the contents do not matter for timing, only the priorities
    replay.update_priorities(np.arange(items), rng.exponential(size=items))
    minibatches = 1 if isinstance(shape, int) else shape[0]
    sample, update = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        b = replay.sample(rng, shape, beta=0.5)
        t1 = time.perf_counter()
        replay.update_priorities(b.index, rng.exponential(size=b.index.shape))
        sample.append(t1 - t0)
        update.append(time.perf_counter() - t1)
    return statistics.median(sample) * 1e6 / minibatches, statistics.median(update) * 1e6 / minibatches


def main() -> int:
    p = Parser(prog="speed.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory", action="store_true", help="measure peak memory instead of throughput")
    p.add_argument("--atari", metavar="ENV", default=None, help="measure an Atari game's training, e.g. ALE/Pong-v5")
    p.add_argument("--steps", type=int, default=None, help="run.py --steps of each throughput training")
    p.add_argument("--repeats", type=int, default=3, help="throughput repetitions (the median is reported)")
    p.add_argument("--name", default=None, help="the trainings go to LOGDIR/NAME (default: a timestamp)")
    p.add_argument("--logdir", default="bench", help="root folder for the trainings")
    p.add_argument("flags", nargs="*", help="extra run.py flags for every training, after --")
    a = p.parse_args()
    if a.repeats < 1:
        fail(f"--repeats must be at least 1, got {a.repeats}")
    root = Path(a.logdir) / (a.name or time.strftime("speed-%Y%m%d-%H%M%S"))
    if root.exists():
        fail(f"{root} already exists; choose another --name")
    if a.atari and not settings.is_atari(a.atari):
        fail(f"--atari takes an Atari game id such as ALE/Pong-v5, got {a.atari!r}")
    if a.memory:
        memory(root, a.flags)
    elif a.atari:
        atari(root, a.atari, a.flags, a.repeats)
    else:
        throughput(root, [*(["--steps", str(a.steps)] if a.steps else []), *a.flags], a.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
