"""Speed and memory of run.py, each training a `python run.py` process (bench.run_trial).

Throughput:  python tools/speed.py --steps 20000
    trains in the 2018 tutorial's regime (one gradient step on a batch of 64 per env step,
    a 2x32 network), 3 times, and prints the median as its last line: steps_per_second: X.
    In the same run, alternating with it: one compiled call per env step, and every DQN
    variant switched on at once; then it times prioritized-replay sampling in process.
Atari:       python tools/speed.py --atari ALE/Pong-v5
    where an Atari training's time goes: the games alone (random actions, the preset's envs, the
    trainings' threads, in this process) against trainings at the preset's update ratio, alternating,
    `--repeats` times each; last line: atari_steps_per_second: X (the trainings' median).
Memory:      python tools/speed.py --memory
    peak RSS of MountainCar trainings with a snapshot (a .keras file and the checkpoint)
    every 40 steps over 40,000 steps and every 100 over 120,000; last line: peak_rss_mb: X.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's scripts and plumbing/

from bench import run_trial  # noqa: E402
from plumbing import settings  # noqa: E402
from plumbing.settings import Parser, fail  # noqa: E402
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


def atari(root: Path, env_id: str, flags: list[str], repeats: int) -> None:
    """Env steps/s of the games alone and of whole trainings (acting, storing, updating)."""
    preset = settings.preset(env_id)
    threads = settings.parse_args(["--env", env_id, *flags]).threads  # the preset's (every core), or -- --threads N
    alone, trained = [], []
    for r in range(repeats):
        alone.append(time_atari_games(env_id, preset["num_envs"], threads))
        trial = dict(name=f"atari-{r}", config="atari", seed=r, flags=["--env", env_id, *ATARI_SPEED, *flags],
                     run_dir=str((root / f"atari-{r}").resolve()))
        s = run_trial(trial)
        if s["status"] != "finished":
            fail(f"the Atari training {trial['name']} failed: {s['error']}")
        trained.append(s["steps_per_second"])
    ratio = preset["train_freq"] / preset["gradient_steps"]
    print(f"{env_id}, {preset['num_envs']} games, {threads} thread{'s' * (threads > 1)}:")
    print(f"  games alone (random actions): {', '.join(f'{v:.0f}' for v in alone)} env steps/s, "
          f"median {statistics.median(alone):.0f}")
    print(f"  training (one gradient step per {ratio:g} env steps): {', '.join(f'{v:.0f}' for v in trained)} "
          f"env steps/s, median {statistics.median(trained):.0f}")
    print(f"atari_steps_per_second: {statistics.median(trained):.0f}")


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
