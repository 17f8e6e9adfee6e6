"""bench.py: grid expansion, the statistics on fixed arrays, and a small real grid on a local Ray."""

import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from conftest import ROOT, checkpoint_state, script

import bench
from plumbing import settings


def test_iqm_is_the_mean_of_the_middle_half():
    # 8 values: drop the 2 lowest and the 2 highest, average 3, 4, 5, 6
    assert bench.iqm(np.array([7.0, 1.0, 100.0, 3.0, 2.0, 5.0, 4.0, 6.0])) == pytest.approx(4.5)
    # 5 values: a quarter of 5 rounds down to 1 from each end: drop -100 and 4, average 1, 2, 3
    assert bench.iqm(np.array([1.0, 2.0, 3.0, 4.0, -100.0])) == pytest.approx(2.0)
    assert bench.iqm(np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 8.0, 8.0]]), axis=-1) == pytest.approx([2.5, 4.0])


def test_bootstrap_confidence_intervals():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 10), rng.normal(0, 1, 10)  # the same distribution twice
    for stat in (np.mean, bench.iqm):
        lo, hi = bench.bootstrap_ci(a, stat)
        assert lo < stat(a) < hi
        lo_b, hi_b = bench.bootstrap_ci(b, stat)
        assert lo < hi_b and lo_b < hi  # identical configurations: the intervals overlap
        lo_c, _ = bench.bootstrap_ci(a + 10, stat)
        assert lo_c > hi  # clearly different ones: they do not
    narrow = bench.bootstrap_ci(rng.normal(0, 1, 200), np.mean)
    assert narrow[1] - narrow[0] < (hi - lo) / 2  # more runs, a tighter interval
    assert bench.bootstrap_ci([500.0] * 5, np.mean) == (500.0, 500.0)  # every seed the same: the point itself


def test_a_bench_over_several_envs_draws_one_panel_per_env(tmp_path):
    def trial(env, config, seed, scale):
        evals = [[step, scale * step / 1000 + seed] for step in (1000, 2000, 3000)]
        return dict(env=env, config=config, seed=seed, evals=evals, script="run.py")

    games = [trial(f"ALE/{game}-v5", f"env=ALE/{game}-v5", 0, scale) for game, scale in
             [("Enduro", 100.0), ("Pong", 5.0), ("Qbert", 1000.0)]]
    fig = bench.curves_figure(games)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["DQN on ALE/Enduro-v5", "DQN on ALE/Pong-v5", "DQN on ALE/Qbert-v5"]
    assert [ax.get_ylim()[1] > 1000 for ax in shown] == [False, False, True]  # each game on its own scale
    one_env = bench.curves_figure([trial("CartPole-v1", "double=0", s, 100.0) for s in (0, 1)])
    assert len(one_env.axes) == 1
    bench.plot_curves(games, tmp_path / "curves.png")
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "curves.png").shape[1] == 1200  # three panels of 4 inches at 100 dpi


def test_grid_expands_to_run_py_flags():
    configs = bench.grid_configs(["double=0,1", "dueling=none,avg"])
    assert configs == [{"double": "0", "dueling": "none"}, {"double": "0", "dueling": "avg"},
                       {"double": "1", "dueling": "none"}, {"double": "1", "dueling": "avg"}]
    assert bench.config_flags({"double": "1", "dueling": "avg", "lr": "1e-3"}, "dqn") == [
        "--double", "--dueling", "avg", "--lr", "1e-3"]
    assert bench.config_flags({"double": "0", "keep-best": "0"}, "dqn") == ["--no-double", "--no-keep-best"]
    assert bench.grid_configs([]) == [{}] and bench.config_label({}) == "default"
    assert bench.listed_configs(["default", "double=1", "double=1 n-step=3"]) == [
        {}, {"double": "1"}, {"double": "1", "n-step": "3"}]


def test_algo_picks_each_trials_script(tmp_path):
    trials = bench.make_trials(bench.grid_configs(["algo=dqn,tabular", "lr=0.5"]), [3], ["--steps", "9"], tmp_path)
    assert [(t["config"], t["script"], t["flags"]) for t in trials] == [
        ("algo=dqn lr=0.5", "run.py", ["--lr", "0.5", "--steps", "9"]),
        ("algo=tabular lr=0.5", "tabular.py", ["--lr", "0.5", "--steps", "9"])]
    (trial,) = bench.make_trials([{"bins": "10"}], [0], [], tmp_path, algo="tabular")  # --algo tabular
    assert trial["script"] == "tabular.py" and trial["flags"] == ["--bins", "10"]


def test_atari_trials_pin_their_threads_and_as_many_run_at_once_as_the_cores_fit(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.settings.PRESETS, "ALE/Pong-v5", {**bench.settings.ATARI, "threads": 4})  # 4 cores
    pong, cartpole = (bench.make_trials([{"env": env}], [0], [], tmp_path)[0] for env in ("ALE/Pong-v5", "CartPole-v1"))
    assert pong["flags"][-2:] == ["--threads", "4"] and pong["threads"] == 4  # what it reserves is what it uses
    assert "--threads" not in cartpole["flags"] and cartpole["threads"] == 1
    (given,) = bench.make_trials([{"env": "ALE/Pong-v5", "threads": "2"}], [0], [], tmp_path)
    assert given["flags"].count("--threads") == 1 and given["threads"] == 2  # --grid threads=... wins
    monkeypatch.setattr(bench, "usable_cores", lambda: 8)
    assert bench.fitting([pong, pong]) == 2 and bench.fitting([cartpole]) == 8 and bench.fitting([pong, cartpole]) == 2
    monkeypatch.setattr(bench, "usable_cores", lambda: 2)
    assert bench.fitting([pong]) == 1  # never fewer than one
    assert bench.trial_threads({"name": "from an older bench.json"}) == 1


def test_seeds_are_a_count_a_list_or_ranges():
    assert settings.seed_list(["3"]) == [0, 1, 2]
    assert settings.seed_list(["4", "2"]) == [4, 2]
    assert settings.seed_list(["1-1"]) == [1]
    assert settings.seed_list(["5-7", "0"]) == [5, 6, 7, 0]


@pytest.mark.parametrize("args, message", [(["--grid", "foo=1,2"], "foo=1,2"), (["--grid", "double"], "FLAG=V1,V2"),
                                           (["--grid", "double=maybe"], "double=0,1"), (["--seeds", "0"], "N >= 1"),
                                           (["--seeds", "3-1"], "ranges such as 5-9, got 3-1"),
                                           (["--resume", "nothing"], "no bench.json"),
                                           (["--configs", "double=1", "double=1"], "twice"),
                                           (["--grid", "double=1,1"], "twice"),
                                           (["--grid", "double=0,1", "--configs", "default"], "not both"),
                                           (["--grid", "lr=1e-3,-1"], "--lr must be positive"),
                                           (["--grid", "dueling=yes"], "invalid choice: 'yes'"),
                                           (["--grid", "algo=dqn,sarsa"], "no algorithm 'sarsa'"),
                                           (["--algo", "tabular", "--grid", "double=0,1"],
                                            "unrecognized arguments: --double 0 (see python tabular.py --help)")])
def test_bad_bench_input_is_one_line_exit_2(tmp_path, args, message):
    r = script("bench.py", *args, "--name", "x", cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "bench" / "x").exists()


@pytest.mark.slow
def test_small_grid_on_local_ray_reports_a_failed_trial_and_resumes(tmp_path):
    """2 configurations on a real local Ray, both trainings at once; one configuration's learning
    rate makes its trial diverge while the other finishes; --resume then reruns only that one."""
    common = ["--env", "CartPole-v1", "--steps", "1000", "--", "--learning-starts", "500", "--eval-every", "500",
              "--eval-episodes", "2", "--final-eval-episodes", "3"]
    r = script("bench.py", "--grid", "lr=1e-3,1e38", "--seeds", "1", "--name", "g", *common, cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "bench" / "g"
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert [(row["config"], row["seed"], row["status"]) for row in rows] == [
        ("lr=1e-3", "0", "finished"), ("lr=1e38", "0", "diverged")]
    assert "non-finite" in rows[1]["error"] and not rows[0]["error"]  # run.py's own last line
    trained = json.loads((root / "runs" / "lr=1e-3_seed0" / "summary.json").read_text())
    assert float(rows[0]["final_eval_mean"]) == pytest.approx(trained["final_eval_mean"])  # the trial's own result
    table = (root / "table.md").read_text()
    assert "| lr=1e-3 | 1 |" in table and "| lr=1e38 | 1 (1 failed) |" in table and "IQM" in table
    wall = float(rows[0]["wall_seconds"])  # the finished trial's median wall per run is its own wall
    assert f"| {wall:.0f} | {float(rows[0]['steps_per_second']):.0f} |" in table.splitlines()[2]
    import imageio.v3 as iio

    assert iio.imread(root / "curves.png").ndim == 3  # a real PNG that decodes to pixels
    # every trial is an ordinary run directory: TensorBoard logs, and a model that plays
    run_dir = root / "runs" / "lr=1e-3_seed0"
    assert json.loads((run_dir / "summary.json").read_text())["evals"][0][0] == 500
    assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "final.keras").is_file()

    finished = {p: p.stat().st_mtime_ns for p in root.glob("runs/lr=1e-3_seed0/summary.json")}
    r = script("bench.py", "--resume", "g", "--no-ray", cwd=tmp_path, timeout=300)  # plain processes this time
    assert r.returncode == 0, r.stderr
    assert "2 trials: 1 already finished, 1 to run" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not trained again
    assert len(list(csv.DictReader(open(root / "results.csv")))) == 2
    assert len(list(root.glob("runs/lr=1e38_seed0.failed-*"))) == 1  # the diverged run kept, renamed


@pytest.mark.slow
def test_a_tabular_trial_runs_its_own_script(tmp_path):
    r = script("bench.py", "--no-ray", "--configs", "algo=tabular bins=10", "--seeds", "1", "--name", "t",
               "--steps", "20000", "--", "--eval-every", "10000", "--final-eval-episodes", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (row,) = csv.DictReader(open(tmp_path / "bench" / "t" / "results.csv"))
    assert (row["config"], row["status"], row["steps"]) == ("algo=tabular bins=10", "finished", "20000")
    assert (tmp_path / "bench" / "t" / "runs" / "algo=tabular_bins=10_seed0" / "final.npy").is_file()


@pytest.mark.slow
def test_resume_continues_a_trial_whose_training_was_killed(tmp_path):
    """kill -9 of a trial's run.py: the bench reports it failed, and --resume continues it from its
    last checkpoint instead of training it again from zero."""
    flags = ["--no-ray", "--seeds", "1", "--name", "k", "--env", "CartPole-v1", "--steps", "10000", "--",
             "--learning-starts", "200", "--snapshot-every", "500", "--eval-every", "0", "--final-eval-episodes", "2"]
    bench_proc = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), *flags], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "bench" / "k" / "runs" / "default_seed0"
    deadline = time.time() + 120
    while not ((run_dir / "checkpoint.npz").exists() and checkpoint_state(run_dir)["step"] >= 1000):
        assert time.time() < deadline and bench_proc.poll() is None
        time.sleep(0.1)
    training = next(p for p in psutil.Process(bench_proc.pid).children(recursive=True) if "run.py" in p.cmdline()[1])
    training.send_signal(signal.SIGKILL)
    assert bench_proc.wait(timeout=60) == 0
    assert [row["status"] for row in csv.DictReader(open(tmp_path / "bench" / "k" / "results.csv"))] == ["failed"]
    step = checkpoint_state(run_dir)["step"]

    r = script("bench.py", "--resume", "k", "--no-ray", cwd=tmp_path)
    assert r.returncode == 0 and "1 trials: 0 already finished, 1 to run" in r.stderr, r.stderr
    log = (run_dir.parent / "default_seed0.log").read_text()
    assert f"resuming {run_dir} at step {step}:" in log  # continued, not started again
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 10000
    assert [p.name for p in run_dir.parent.iterdir() if p.is_dir()] == ["default_seed0"]  # nothing renamed


@pytest.mark.slow
def test_ctrl_c_stops_bench_with_a_snapshot_and_starts_no_further_trial(tmp_path):
    """SIGINT to bench.py alone (not its trainings, as `kill -INT` sends it): the running training stops with a
    snapshot, the next seed's never starts, and bench.py says how to continue, exit 130."""
    flags = ["--no-ray", "--parallel", "1", "--seeds", "2", "--name", "c", "--algo", "tabular", "--steps", "5000000",
             "--", "--snapshot-every", "20000", "--eval-every", "0"]
    bench_proc = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), *flags], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "bench" / "c" / "runs"
    deadline = time.time() + 120
    while not (runs / "default_seed0" / "checkpoint.npz").exists():
        assert time.time() < deadline and bench_proc.poll() is None
        time.sleep(0.1)
    bench_proc.send_signal(signal.SIGINT)
    _, err = bench_proc.communicate(timeout=60)
    assert bench_proc.returncode == 130 and err.strip().splitlines()[-1] == (
        "bench.py: interrupted; the running trainings saved a snapshot. Continue with: python bench.py --resume c")
    assert json.loads((runs / "default_seed0" / "summary.json").read_text())["status"] == "interrupted"
    assert not (runs / "default_seed1").exists()


@pytest.mark.slow
def test_killing_bench_stops_its_training_with_a_snapshot_to_resume(tmp_path):
    # `kill` to bench.py: its training gets SIGTERM (once per thread of bench.py it is handed to,
    # as the process ends), stops between two steps and saves; a second signal must not kill it.
    flags = ["--no-ray", "--seeds", "1", "--name", "t", "--algo", "tabular", "--steps", "5000000", "--",
             "--snapshot-every", "20000", "--eval-every", "0"]
    bench_proc = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), *flags], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "bench" / "t" / "runs" / "default_seed0"
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.npz").exists():
        assert time.time() < deadline and bench_proc.poll() is None
        time.sleep(0.1)
    children = psutil.Process(bench_proc.pid).children(recursive=True)
    training = next(p for p in children if "tabular.py" in p.cmdline()[1])
    bench_proc.send_signal(signal.SIGTERM)
    bench_proc.wait(timeout=60)
    training.wait(timeout=60)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["steps"] > 20_000
    assert (run_dir / f"step_{s['steps']}.npy").is_file() and checkpoint_state(run_dir)["step"] == s["steps"]
    assert f"interrupted at step {s['steps']}" in (run_dir.parent / "default_seed0.log").read_text()
