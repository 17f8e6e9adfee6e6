"""Benchmark run.py: learning over several seeds, and raw training throughput.

Learning:    python bench.py --seeds 0 1 2 3 4 [-- extra run.py flags]
    trains once per seed (in parallel, up to the core count), prints a markdown table per
    seed and the aggregate, and plots every seed's evaluation curve to --plot.
Throughput:  python bench.py --throughput --steps 20000
    trains in the 2018 tutorial's regime (one gradient step on a batch of 64 per env step,
    a 2x32 network), 3 times, and prints the median as its last line: steps_per_second: X.
    In the same run, alternating with it: one compiled call per env step, and every DQN
    variant switched on at once; then it times prioritized-replay sampling in process.

Each training is a separate `python run.py` process, timed from start to exit.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The tutorial's regime: 2x32 network, batch 64, one gradient step per env step. Training
# runs every 16 steps with 16 gradient steps per compiled call (same ratio, less overhead).
TUTORIAL_REGIME = ["--units", "32", "--batch-size", "64", "--train-freq", "16", "--gradient-steps", "16",
                   "--learning-starts", "64", "--eval-every", "0", "--final-eval-episodes", "0"]
ALL_VARIANTS = ["--double", "--dueling", "avg", "--prioritized", "--n-step", "3", "--tau", "0.005", "--loss", "huber"]


def run_trainings(jobs: list[tuple[str, list[str]]], logdir: Path, parallel: int) -> dict[str, dict]:
    """Run `run.py` once per (name, flags), `parallel` at a time; return name -> summary."""
    logdir.mkdir(parents=True, exist_ok=True)
    pending, running, results = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            name, flags = pending.pop(0)
            out = open(logdir / f"{name}.log", "w")
            cmd = [sys.executable, str(HERE / "run.py"), "--name", name, "--logdir", str(logdir), *flags]
            running[name] = (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), time.time(), out)
        time.sleep(0.2)
        for name, (proc, started, out) in list(running.items()):
            if proc.poll() is None:
                continue
            out.close()
            del running[name]
            summary_file = logdir / name / "summary.json"
            summary = json.loads(summary_file.read_text()) if summary_file.exists() else {"status": "failed"}
            summary.update(process_seconds=round(time.time() - started, 1), exit_code=proc.returncode)
            results[name] = summary
            print(f"  {name}: exit {proc.returncode}, final eval {summary.get('final_eval_mean')}, "
                  f"{summary['process_seconds']} s", file=sys.stderr, flush=True)
    return results


def fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def learning_table(results: dict[str, dict]) -> str:
    """One row per seed. 'final' is final.keras (with --keep-best: the best periodic evaluation's
    weights), 'last' the weights at the last step; both over the same 100 fresh episodes."""
    rows = ["| seed | final.keras: mean ± std (100 ep.) | solved | last weights: mean | "
            "first eval ≥ threshold at step | wall s | steps/s | peak RSS MiB |",
            "|---:|---:|:---:|---:|---:|---:|---:|---:|"]
    for s in results.values():
        rows.append(f"| {s.get('seed', '?')} | {fmt(s.get('final_eval_mean'))} ± {fmt(s.get('final_eval_std'))} | "
                    f"{'yes' if s.get('solved') else 'no'} | {fmt(s.get('last_eval_mean'))} | "
                    f"{fmt(s.get('first_solved_step'), 'd')} | {s['process_seconds']:.0f} | "
                    f"{fmt(s.get('steps_per_second'), '.0f')} | {fmt(s.get('peak_rss_mb'), '.0f')} |")
    solved = sum(bool(s.get("solved")) for s in results.values())
    wall = statistics.median(s["process_seconds"] for s in results.values())
    rows.append(f"\nsolved: {solved}/{len(results)}, median wall seconds: {wall:.0f}")
    return "\n".join(rows)


def plot_curves(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for s in results.values():
        if s.get("evals"):
            steps, means = zip(*s["evals"], strict=True)
            ax.plot(steps, means, label=f"seed {s['seed']}", alpha=0.8)
    threshold = next((s.get("solved_threshold") for s in results.values() if s.get("solved_threshold")), None)
    if threshold is not None:
        ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"solved ({threshold})")
    env = next(iter(results.values())).get("env", "")
    ax.set(xlabel="environment steps", ylabel="greedy evaluation return", title=f"DQN on {env}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


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
            s = run_trainings([(f"c{i}-{r}", [*TUTORIAL_REGIME, *extra, *flags])], root, 1)[f"c{i}-{r}"]
            sps[name].append(s.get("steps_per_second", 0.0))
            if i == 0:
                with_compile.append(s.get("steps", 0) / s.get("train_seconds", float("inf")))
    med = {name: statistics.median(x) for name, x in sps.items()}
    base = next(iter(med.values()))
    for name, x in sps.items():
        print(f"{name}: {', '.join(f'{v:.0f}' for v in x)} steps/s, median {med[name]:.0f} "
              f"({med[name] / base:.2f}x the batched plain DQN)")
    print(f"batched, including the one-time XLA compile: {statistics.median(with_compile):.0f} steps/s")
    sample_us, update_us = time_prioritized_sampling()
    print(f"prioritized replay, 100,000 items: sampling a batch of 64 takes {sample_us:.0f} us, updating its "
          f"priorities {update_us:.0f} us; one batched gradient update (with its env step) takes "
          f"{1e6 / base:.0f} us")
    print(f"steps_per_second: {base:.0f}")


def time_prioritized_sampling(items: int = 100_000, batch: int = 64, calls: int = 2000) -> tuple[float, float]:
    """Median microseconds to sample one batch from a full prioritized replay, and to update its priorities."""
    import numpy as np

    from replay_buffer import PrioritizedReplayBuffer

    rng = np.random.default_rng(0)
    replay = PrioritizedReplayBuffer(items, (8,))  # LunarLander-sized observations
    replay.size = items  # the contents do not matter for timing, only the priorities
    replay.update_priorities(np.arange(items), rng.exponential(size=items))
    sample, update = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        b = replay.sample(rng, batch, beta=0.5)
        t1 = time.perf_counter()
        replay.update_priorities(b["index"], rng.exponential(size=batch))
        sample.append(t1 - t0)
        update.append(time.perf_counter() - t1)
    return statistics.median(sample) * 1e6, statistics.median(update) * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="one training per seed")
    p.add_argument("--parallel", type=int, default=os.cpu_count(), help="trainings at a time")
    p.add_argument("--name", default=time.strftime("bench-%Y%m%d-%H%M%S"), help="runs go to LOGDIR/NAME")
    p.add_argument("--logdir", default="runs", help="root folder for the runs")
    p.add_argument("--plot", default=None, help="PNG of the evaluation curves (default: LOGDIR/NAME/curves.png)")
    p.add_argument("--throughput", action="store_true", help="measure training steps/s in the tutorial's regime")
    p.add_argument("--steps", type=int, default=None, help="env steps per training (default: run.py's)")
    p.add_argument("--repeats", type=int, default=3, help="throughput repetitions (the median is reported)")
    p.add_argument("flags", nargs="*", help="extra run.py flags, after --")
    a = p.parse_args()
    root = Path(a.logdir) / a.name
    steps = [] if a.steps is None else ["--steps", str(a.steps)]

    if a.throughput:
        throughput(root, steps + a.flags, a.repeats)
        return 0

    jobs = [(f"seed{seed}", ["--seed", str(seed), *steps, *a.flags]) for seed in a.seeds]
    results = dict(sorted(run_trainings(jobs, root, a.parallel).items(), key=lambda kv: kv[1].get("seed", 0)))
    table = learning_table(results)
    plot_curves(results, Path(a.plot) if a.plot else root / "curves.png")
    (root / "table.md").write_text(table + "\n")
    print(f"command: python bench.py --seeds {' '.join(map(str, a.seeds))} {' '.join(steps + a.flags)}".rstrip())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
