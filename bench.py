"""Benchmark run.py: compare configurations over many seeds, with confidence intervals; measure speed.

Compare:     python bench.py --grid double=0,1 dueling=none,avg --seeds 5 --env CartPole-v1 --steps 50000
    trains every combination of the given run.py flags x seeds; each training is one
    `python run.py` process inside a Ray Tune trial (`algo=` picks another training script:
    --grid algo=dqn,reinforce,a2c, or --algo a2c for all). Ray starts locally on all cores, or
    --address auto|ray://host:port sends the trials to a running Ray cluster. Writes to
    bench/NAME/: runs/ (every trial's run directory: TensorBoard logs, snapshots), results.csv
    (one row per trial), table.md (per configuration: IQM and mean of the final evaluation
    with 95% bootstrap confidence intervals, solved count, time and steps to solve, steps/s)
    and curves.png (evaluation return against env steps, one line and band per configuration).
A list:      python bench.py --configs default double=1 "double=1 n-step=3" --seeds 5
One config:  python bench.py --seeds 0 1 2 3 4 [-- extra run.py flags]
Resume:      python bench.py --resume NAME    reruns only the trials that did not finish
Speed and memory have their own script: tools/speed.py.
"""

import argparse
import contextlib
import csv
import itertools
import json
import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from plumbing import (
    settings,  # run.py's flags and one-line errors, without TensorFlow; trainings run in their own processes
)
from plumbing.atomic import write_atomically, write_text_atomically
from plumbing.startup import quiet_stderr
from plumbing.system import ending_with_parent, usable_cores

HERE = Path(__file__).resolve().parent

# ------------------------------------------------------------------ the trials to run


# every flag (as its dest) of each algorithm's script, and its default
DEFAULTS = {algo: vars(settings.make_parser(algo).parse_args([])) for algo in settings.ALGORITHMS}


def setting(spec: str, option: str) -> tuple[str, list[str]]:
    """"lr=1e-3,3e-4" -> ("lr", ["1e-3", "3e-4"]), checking that some training script has the flag
    --lr (whether the trial's own script has it is checked with its other flags), or that algo=
    names algorithms."""
    key, _, values = spec.partition("=")
    if not values or not (key == "algo" or any(key.replace("-", "_") in d for d in DEFAULTS.values())):
        settings.fail(f"{option} {spec!r}: expected FLAG=V1,V2,... with FLAG a run.py flag without its dashes "
                      "(or one of another algorithm's script), e.g. double=0,1 or lr=1e-3,3e-4")
    unknown = [v for v in values.split(",") if v not in settings.ALGORITHMS] if key == "algo" else []
    if unknown:
        settings.fail(f"{option} {spec!r}: no algorithm {unknown[0]!r}; choose from {', '.join(settings.ALGORITHMS)}")
    return key, values.split(",")


def grid_configs(specs: list[str]) -> list[dict[str, str]]:
    """--grid: ["double=0,1", "dueling=none,avg"] -> every combination, as {flag: value} dicts."""
    axes = [[(key, v) for v in values] for key, values in (setting(spec, "--grid") for spec in specs)]
    return [dict(combo) for combo in itertools.product(*axes)]


def listed_configs(specs: list[str]) -> list[dict[str, str]]:
    """--configs: ["default", "double=1", "double=1 n-step=3"] -> one configuration each."""
    configs = []
    for spec in specs:
        pairs = [] if spec == "default" else [setting(part, "--configs") for part in spec.split()]
        if any(len(values) > 1 for _, values in pairs):
            settings.fail(f"--configs {spec!r}: one value per flag here; --grid takes several")
        configs.append({key: values[0] for key, values in pairs})
    return configs


def config_flags(config: dict[str, str], algo: str) -> list[str]:
    """{"double": "1", "dueling": "avg"} -> ["--double", "--dueling", "avg"]; on/off flags take 0/1
    (double=0 gives --no-double). algo= is not a flag: it picks the script."""
    flags = []
    for key, value in config.items():
        if key == "algo":
            continue
        if isinstance(DEFAULTS[algo].get(key.replace("-", "_")), bool):
            on = value.lower() in ("1", "true", "yes", "on")
            if not on and value.lower() not in ("0", "false", "no", "off"):
                settings.fail(f"--grid {key}={value}: --{key} is on/off, use {key}=0,1")
            flags.append(f"--{key}" if on else f"--no-{key}")
        else:
            flags += [f"--{key}", value]
    return flags


def config_label(config: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items()) or "default"


def make_trials(configs: list[dict[str, str]], seeds: list[int], common: list[str], root: Path,
                algo: str = "dqn") -> list[dict]:
    """One trial per configuration and seed: its label, script (its algo=, else `algo`), flags, and
    own run directory."""
    labels = [config_label(c) for c in configs]
    if len(set(labels)) < len(labels) or len(set(seeds)) < len(seeds):
        settings.fail("a configuration or a seed is given twice; give each once (a repeat would share a run directory)")
    trials = []
    for config, seed in itertools.product(configs, seeds):
        label = config_label(config)
        name = f"{label.replace(' ', '_').replace('/', '-')}_seed{seed}"  # env=ALE/Pong-v5: one folder, not two
        trial_algo = config.get("algo", algo)
        flags = [*config_flags(config, trial_algo), *common]
        # a bad value fails here, in one line, not in every trial
        threads = getattr(settings.parse_args([*flags, "--seed", str(seed)], trial_algo), "threads", 1)
        if threads > 1 and "--threads" not in flags:  # the Atari preset's, from this machine's cores: pinned, so
            flags += ["--threads", str(threads)]  # the trial uses what it reserves, and a resumed bench keeps it
        run_dir = str((root / "runs" / name).resolve())
        trials.append(dict(name=name, config=label, seed=seed, script=settings.ALGORITHMS[trial_algo].script,
                           flags=flags, run_dir=run_dir, threads=threads))
    return trials


# ------------------------------------------------------ running one trial, and many


RUNNING: set[subprocess.Popen] = set()  # the trainings running now: Ctrl-C tells each to stop


def run_trial(trial: dict) -> dict:
    """Train one trial with `python run.py` and return its summary with `status` (finished,
    interrupted, diverged or failed) and `error`. Never raises: one bad trial cannot stop the
    others. A trial stopped earlier (Ctrl-C, a cancelled Ray trial, a kill -9, a power cut)
    continues from its last complete checkpoint (run.py --resume); the run directory of one
    that has none, or that diverged, is kept, renamed, and the trial starts again."""
    run_dir = Path(trial["run_dir"])
    summary_file = run_dir / "summary.json"
    old = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    if old.get("status") != "diverged" and (run_dir / "checkpoint.npz").exists():
        cmd = ["--resume", str(run_dir)]
    else:
        if run_dir.exists():
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}"))
        cmd = ["--name", run_dir.name, "--logdir", str(run_dir.parent), "--seed", str(trial["seed"]), *trial["flags"]]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_file = run_dir.parent / f"{run_dir.name}.log"
    started = time.time()
    with open(log_file, "a") as log:
        script = HERE / trial.get("script", "run.py")  # benches from before algo= ran only run.py
        proc = subprocess.Popen([sys.executable, str(script), *cmd], stdout=log, stderr=subprocess.STDOUT,
                                **ending_with_parent())
        RUNNING.add(proc)
        proc.wait()
        RUNNING.discard(proc)
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {"status": "failed"}
    error = None
    if proc.returncode != 0:  # run.py's last line says why (a one-line error, or how it stopped)
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
        error = lines[-1][-300:] if lines else f"exit code {proc.returncode}"
    return {**trial, **summary, "exit_code": proc.returncode, "error": error,
            "process_seconds": round(time.time() - started, 1)}


def trial_threads(trial: dict) -> int:
    return trial.get("threads", 1)  # benches written before trials recorded it ran one thread each


def fitting(trials: list[dict]) -> int:
    """How many of these trials run at once on this machine's cores without sharing one."""
    return max(1, usable_cores() // max(map(trial_threads, trials)))


def run_in_processes(trials: list[dict], parallel: int | None, on_done) -> list[dict]:
    """Without Ray: `parallel` trainings at a time on this machine (default: as many as its cores fit), in
    plain processes."""
    with ThreadPoolExecutor(parallel or fitting(trials)) as pool:
        futures = [pool.submit(run_trial, t) for t in trials]
        results = []
        try:
            for f in as_completed(futures):
                results.append(f.result())
                on_done(results[-1])
        except KeyboardInterrupt:  # Ctrl-C: the queued trials never start, the running ones stop with a snapshot
            for f in futures:
                f.cancel()
            for proc in list(RUNNING):  # SIGTERM stops one that Ctrl-C did not reach (`kill -INT` to bench.py);
                proc.send_signal(signal.SIGTERM)  # one it reached ignores it (a second SIGINT would kill it)
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: they are saving already
                pool.shutdown(wait=True)
            raise
    return results


# What Ray's C++ client writes, once a second, while it retries a cluster it cannot join
RAY_RETRIES = re.compile(r"gcs_client\.cc:\d+: Failed to get cluster ID")


def start_ray(address: str | None, name: str) -> None:
    """Start Ray here on every core, or connect to the cluster at `address` (one-line error if
    that fails: a wrong address, or a cluster that wants a token this driver does not send)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's quiet reporter; we print our own progress
    import ray

    host, _, port = (address or "").rpartition(":")
    if host and port.isdigit():  # host:port: a quick look first, as Ray retries a wrong one for minutes
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as e:
            settings.fail(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                          f"ray start --head, or pass its address, then: python bench.py --resume {name}")
    try:
        # Only around joining a cluster: a local start's services would inherit the held-back stderr.
        with quiet_stderr(RAY_RETRIES) if address else contextlib.nullcontext():
            ray.init(address=address, num_cpus=None if address else usable_cores(), include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError as e:
        settings.fail(f"cannot connect to the Ray cluster at {address} ({e}). Check the address; if the cluster "
                      "uses token authentication (Ray turns it on when ~/.ray/auth_token exists), set "
                      f"RAY_AUTH_MODE=token, then: python bench.py --resume {name}")


def run_on_ray(trials: list[dict], parallel: int | None, root: Path, on_done) -> list[dict]:
    """Each trial is a Ray Tune trial reserving a CPU per thread it trains with, on the Ray that start_ray started
    or joined.
    A cluster's nodes need this repository at the same path with its requirements installed."""
    import ray
    from ray import tune

    def trainable(config: dict) -> dict:
        # Returned, not raised: a failed training is a result. As one JSON string, so that
        # Tune's own result keys (config, done, ...) cannot clash with ours.
        return {"trial_result": json.dumps(run_trial(config["trial"]))}

    class Progress(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            on_done(json.loads(trial.last_result["trial_result"]))

        def on_trial_error(self, iteration, trials, trial, **info):  # the Ray worker itself died
            on_done(crashed(trial.config["trial"]))

    tuner = tune.Tuner(
        # Each trial reserves as many CPUs as its training's threads: Ray runs as many at once as fit.
        tune.with_resources(trainable, lambda config: tune.PlacementGroupFactory([{"CPU": trial_threads(
            config["trial"])}])),
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(max_concurrent_trials=parallel),
        run_config=tune.RunConfig(name="tune", storage_path=str(root.resolve()), verbose=0, callbacks=[Progress()],
                                  failure_config=tune.FailureConfig(max_failures=0)))
    # A trial without a result: its worker died, or Tune cancelled it before it ran.
    results = [json.loads(r.metrics["trial_result"]) if "trial_result" in (r.metrics or {})
               else crashed(r.config["trial"]) for r in tuner.fit()]
    ray.shutdown()
    return results


def crashed(trial: dict) -> dict:
    return {**trial, "status": "failed", "error": "the Ray worker running this trial died"}


# ---------------------------------------------------------------------- statistics


def iqm(x, axis: int = -1):
    """Interquartile mean: the mean of the middle 50% of the values (Agarwal et al. 2021).
    Less swayed by one outlier seed than the mean, less wasteful than the median."""
    from scipy import stats

    return stats.trim_mean(x, 0.25, axis=axis)


def bootstrap_ci(values, statistic, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap confidence interval of `statistic` over the runs. The runs of
    one configuration all share one env, so this is the stratified bootstrap of Agarwal et al.
    2021 with a single stratum."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:  # nothing to resample: the interval is the point
        return float(statistic(x)), float(statistic(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few seeds give a coarse bootstrap distribution, which is fine here
        ci = stats.bootstrap((x,), statistic, n_resamples=resamples, method="percentile",
                             rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


# ---------------------------------------------------------------------- reports

CSV_COLUMNS = ["config", "seed", "status", "final_eval_mean", "final_eval_std", "last_eval_mean", "solved",
               "first_solved_step", "first_solved_seconds", "best_eval_mean", "steps", "wall_seconds",
               "steps_per_second", "peak_rss_mb", "run_dir", "error"]


def write_csv(results: list[dict], path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(results)

    write_atomically(path, write)


def fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def by_config(results: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["config"], []).append(r)
    return groups


def config_table(results: list[dict]) -> str:
    """One row per configuration, over its seeds; a trial that did not finish counts as failed."""
    rows = ["| configuration | trials | IQM of final return [95% CI] | mean [95% CI] | solved | "
            "last weights solved | median seconds to solve | median steps to solve | median wall s | steps/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for config, rs in by_config(results).items():
        ok = [r for r in rs if r.get("status") == "finished" and r.get("final_eval_mean") is not None]
        trials = f"{len(rs)}" + (f" ({len(rs) - len(ok)} failed)" if len(ok) < len(rs) else "")
        if not ok:
            rows.append(f"| {config} | {trials} | - | - | 0/{len(rs)} | 0/{len(rs)} | - | - | - | - |")
            continue
        final = [r["final_eval_mean"] for r in ok]
        lo, hi = bootstrap_ci(final, iqm)
        mlo, mhi = bootstrap_ci(final, np.mean)
        solved = [r for r in ok if r.get("solved")]
        threshold = ok[0].get("solved_threshold")
        last_solved = "-" if threshold is None else \
            f"{sum(r.get('last_eval_mean') is not None and r['last_eval_mean'] >= threshold for r in ok)}/{len(rs)}"
        reached = [r for r in ok if r.get("first_solved_step") is not None]
        to_solve = {key: statistics.median(r[key] for r in reached) if reached else None
                    for key in ("first_solved_seconds", "first_solved_step")}
        rows.append(f"| {config} | {trials} | {iqm(final):.1f} [{lo:.1f}, {hi:.1f}] | "
                    f"{np.mean(final):.1f} [{mlo:.1f}, {mhi:.1f}] | {len(solved)}/{len(rs)} | {last_solved} | "
                    f"{fmt(to_solve['first_solved_seconds'], '.0f')} | {fmt(to_solve['first_solved_step'], '.0f')} | "
                    f"{statistics.median(r['wall_seconds'] for r in ok):.0f} | "
                    f"{statistics.median(r['steps_per_second'] for r in ok):.0f} |")
    return "\n".join(rows)


def trial_table(results: list[dict]) -> str:
    """One row per trial. 'final' is final.keras (with --keep-best: the best periodic evaluation's
    weights), 'last' the weights at the last step; both over the same 100 fresh episodes."""
    rows = ["| configuration | seed | status | final snapshot: mean ± std | solved | last weights: mean | "
            "first eval ≥ threshold at step | wall s | steps/s | peak RSS MiB |",
            "|---|---:|---|---:|:---:|---:|---:|---:|---:|---:|"]
    for r in results:
        status = r.get("status", "failed") + (f": {r['error']}" if r.get("error") else "")
        rows.append(f"| {r['config']} | {r['seed']} | {status} | {fmt(r.get('final_eval_mean'))} ± "
                    f"{fmt(r.get('final_eval_std'))} | {'yes' if r.get('solved') else 'no'} | "
                    f"{fmt(r.get('last_eval_mean'))} | {fmt(r.get('first_solved_step'), 'd')} | "
                    f"{fmt(r.get('wall_seconds'), '.0f')} | {fmt(r.get('steps_per_second'), '.0f')} | "
                    f"{fmt(r.get('peak_rss_mb'), '.0f')} |")
    return "\n".join(rows)


def on_common_steps(curves: list[np.ndarray]) -> tuple[list[float], list[list[float]]]:
    """Each seed's evaluations (steps, means) read at every step any seed evaluated at, within its
    own range, by linear interpolation: the policy-gradient scripts evaluate after the batch that
    passes a multiple of --eval-every, a different step for every seed. Returns the steps and,
    at each, the values of the seeds that cover it."""
    steps = sorted(set(np.concatenate([c[0] for c in curves]).tolist()))
    values = [[float(np.interp(s, c[0], c[1])) for c in curves if c[0][0] <= s <= c[0][-1]] for s in steps]
    return steps, values


def plot_curves(results: list[dict], path: Path) -> None:
    """Write curves_figure's PNG to `path`."""
    fig = curves_figure(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def curves_figure(results: list[dict]):
    """Greedy evaluation return against env steps: per configuration the mean over seeds with
    its 95% bootstrap band (and, for a single configuration, every seed's own curve). A bench over
    several envs (--grid env=...) gets one panel per env, each on its own scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(r.get("env", "") for r in results))
    if len(envs) == 1:
        many = len(by_config(results)) > 4  # then the legend goes beside the plot, not over the curves
        fig, ax = plt.subplots(figsize=(11, 4.5) if many else (7, 4))
        draw_curves(ax, results, many)
    else:
        columns = min(len(envs), 4)
        rows = -(-len(envs) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
        for ax, env in zip(axes.flat, envs, strict=False):
            draw_curves(ax, [r for r in results if r.get("env", "") == env], many=False)
        for ax in axes.flat[len(envs):]:
            ax.set_visible(False)
    fig.tight_layout()
    return fig


def draw_curves(ax, results: list[dict], many: bool) -> None:
    """One env's curves on `ax`."""
    groups = by_config(results)
    for i, (config, rs) in enumerate(groups.items()):
        color = f"C{i}"
        curves = [np.array(r["evals"], float).T for r in rs if r.get("evals")]
        if len(groups) == 1:
            for steps, means in curves:
                ax.plot(steps, means, color="grey", alpha=0.35, linewidth=0.8)
        if not curves:
            continue
        steps, values = on_common_steps(curves)
        bands = [bootstrap_ci(v, np.mean, resamples=500) for v in values]
        ax.plot(steps, [np.mean(v) for v in values], color=color, label=f"{config} ({len(rs)} seeds)")
        ax.fill_between(steps, [b[0] for b in bands], [b[1] for b in bands], color=color, alpha=0.2)
    threshold = next((r.get("solved_threshold") for r in results if r.get("solved_threshold") is not None), None)
    if threshold is not None:
        ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"solved ({threshold})")
    env = next((r["env"] for r in results if r.get("env")), "")
    dqn_only = all(r.get("script", "run.py") == "run.py" for r in results)
    ax.set(xlabel="environment steps", ylabel="greedy evaluation return", title=f"DQN on {env}" if dqn_only else env)
    if not ax.get_legend_handles_labels()[0]:
        return
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    else:
        ax.legend(loc="lower right", fontsize=8)


# ---------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = settings.Parser(prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", nargs="+", default=[], metavar="FLAG=V1,V2",
                   help="run.py flags to vary (without their dashes); every combination is one configuration")
    p.add_argument("--configs", nargs="+", default=None, metavar="'FLAG=V ...'",
                   help="instead of a grid, these configurations (each one a quoted list of FLAG=VALUE, or default)")
    p.add_argument("--seeds", nargs="+", default=["5"],
                   help="seeds per configuration: one number N means seeds 0..N-1, several mean exactly those, "
                        "and A-B means seeds A to B (--seeds 1-1: seed 1 alone)")
    p.add_argument("--algo", choices=list(settings.ALGORITHMS), default="dqn",
                   help="the training script of every trial whose configuration sets no algo= "
                        f"({', '.join(f'{name}: {a.script}' for name, a in settings.ALGORITHMS.items())})")
    p.add_argument("--env", default=None, help="--env for every trial (default: each script's own)")
    p.add_argument("--steps", type=int, default=None,
                   help="--steps for every trial (default: each script's, or its env preset's)")
    p.add_argument("--name", default=None, help="results go to LOGDIR/NAME (default: a timestamp)")
    p.add_argument("--logdir", default="bench", help="root folder for benchmark results")
    p.add_argument("--resume", metavar="NAME", default=None,
                   help="finish the bench LOGDIR/NAME: rerun its failed or interrupted trials, keep the finished ones")
    p.add_argument("--address", default=None,
                   help="a running Ray cluster (auto, or ray://host:port); default: start Ray here on all cores")
    p.add_argument("--parallel", type=int, default=None,
                   help="at most this many trainings at a time (default: as many as the cores fit, one core per "
                        "training thread: Atari trainings use several)")
    p.add_argument("--no-ray", action="store_true",
                   help="run the trainings as plain processes here instead (the baseline for Ray's overhead)")
    p.add_argument("--plot", default=None, help="where to write the curves (default: LOGDIR/NAME/curves.png)")
    p.add_argument("flags", nargs="*", help="extra run.py flags for every trial, after --")
    a = p.parse_args()
    if a.grid and a.configs:
        settings.fail("use --grid (every combination) or --configs (a list), not both")
    if a.parallel is not None and a.parallel < 1:
        settings.fail(f"--parallel must be at least 1, got {a.parallel}")
    a.seeds = settings.seed_list(a.seeds)
    return a


def main() -> int:
    a = parse_args()
    name = a.resume or a.name or time.strftime("bench-%Y%m%d-%H%M%S")
    root = Path(a.logdir) / name
    common = [*(["--env", a.env] if a.env else []), *(["--steps", str(a.steps)] if a.steps else []), *a.flags]
    spec_file = root / "bench.json"
    if a.resume:  # the trials come from the bench being resumed, like run.py --resume
        if not spec_file.is_file():
            settings.fail(f"{root} is not a bench to resume (no bench.json); pass the NAME of an earlier bench")
        trials = json.loads(spec_file.read_text())["trials"]
    else:
        if root.exists():
            settings.fail(f"{root} already exists; choose another --name, or --resume {name}")
        configs = listed_configs(a.configs) if a.configs else grid_configs(a.grid)
        trials = make_trials(configs, a.seeds, common, root, a.algo)
        root.mkdir(parents=True)
        write_text_atomically(spec_file, json.dumps(dict(command=sys.argv, trials=trials), indent=1))

    done = {t["name"]: trial_summary(t) for t in trials}
    kept = {k: v for k, v in done.items() if v and v.get("status") == "finished"}
    todo = [t for t in trials if t["name"] not in kept]
    if todo and not a.no_ray:
        start_ray(a.address, name)
    print(f"{len(trials)} trials: {len(kept)} already finished, {len(todo)} to run "
          f"({'plain processes' if a.no_ray else 'Ray, ' + (a.address or 'local')})", file=sys.stderr)
    bar = tqdm(total=len(todo), desc="trials", unit="trial", disable=None)

    def on_done(r: dict) -> None:
        bar.update(1)
        bar.write(f"  {r['name']}: {r.get('status')}, final eval {fmt(r.get('final_eval_mean'))}"
                  + (f" ({r['error']})" if r.get("error") else ""))

    started = time.time()
    if todo:
        if a.no_ray:
            try:
                new = run_in_processes(todo, a.parallel, on_done)
            except KeyboardInterrupt:
                bar.close()
                print(f"bench.py: interrupted; the running trainings saved a snapshot. Continue with: "
                      f"python bench.py --resume {name}", file=sys.stderr)
                return 130
        else:
            new = run_on_ray(todo, a.parallel, root, on_done)
        kept.update({r["name"]: r for r in new})
    bar.close()
    results = [kept[t["name"]] for t in trials]  # in grid order

    write_csv(results, root / "results.csv")
    table = config_table(results) + "\n\n" + trial_table(results)
    write_text_atomically(root / "table.md", table + "\n")
    plot_curves(results, Path(a.plot) if a.plot else root / "curves.png")
    print(f"{len(todo)} trainings in {time.time() - started:.0f} s; results in {root}/", file=sys.stderr)
    print(table)
    return 0


def trial_summary(trial: dict) -> dict | None:
    """The summary.json of a trial's run directory, if it has one (used by --resume)."""
    f = Path(trial["run_dir"]) / "summary.json"
    return {**trial, **json.loads(f.read_text()), "error": None} if f.exists() else None


if __name__ == "__main__":
    sys.exit(main())
