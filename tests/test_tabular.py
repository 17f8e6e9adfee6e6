"""tabular.py: the table update and the cells against hand-computed values, a short real training
that beats a random agent by far, playing its table as users do, Ctrl-C and --resume, and the
one-line errors. No TensorFlow in these processes."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, imported_modules, script, summary

import tabular


def test_td_update_moves_one_entry_toward_its_target():
    q = np.zeros((3, 2))
    q[2] = [2.0, 4.0]
    s, s_next = np.array([0]), np.array([2])  # one cell each: the plain table
    # bootstrapped: target -1 + 0.9 * max(2, 4) = 2.6, error 2.6, entry 0 + 0.5 * 2.6
    assert tabular.td_update(q, s, 1, -1.0, s_next, False, lr=0.5, gamma=0.9) == pytest.approx(2.6)
    assert q[0, 1] == pytest.approx(1.3) and q[0, 0] == 0 and list(q[2]) == [2.0, 4.0]
    # terminated: target -1 alone, error -2.3, entry 1.3 - 0.5 * 2.3
    assert tabular.td_update(q, s, 1, -1.0, s_next, True, lr=0.5, gamma=0.9) == pytest.approx(-2.3)
    assert q[0, 1] == pytest.approx(0.15)


def test_with_tile_coding_q_is_a_sum_over_grids_and_moves_by_the_whole_step():
    q = np.zeros((10, 2))
    q[[1, 6]] = [1.0, 2.0]  # s' is in cells 1 and 6: Q(s', .) = (2, 4)
    s, s_next = np.array([0, 5]), np.array([1, 6])
    assert tabular.td_update(q, s, 1, -1.0, s_next, False, lr=0.5, gamma=0.9) == pytest.approx(2.6)
    assert q[0, 1] == q[5, 1] == pytest.approx(0.65)  # each of the two entries takes half of 0.5 * 2.6
    np.testing.assert_allclose(tabular.q_row(q, s), [0.0, 1.3])


def test_cells_of_a_discretized_box():
    env = tabular.make_table_env("MountainCar-v0", 4)  # both numbers scaled to [-1, 1]: edges at -0.5, 0, 0.5
    assert list(env.observation_space.nvec) == [16]

    def cell(position: float, velocity: float) -> int:
        cells = env.observation(np.array([position, velocity], dtype=np.float32))
        assert cells.shape == (1,)
        return int(cells[0])

    assert cell(-1.0, -1.0) == 0 and cell(1.0, 1.0) == 15  # the corners
    assert cell(-0.75, 0.9) == 3 and cell(0.9, -0.75) == 12  # the position picks the row of 4
    assert cell(0.0, 0.0) == 10 and cell(-0.01, -0.01) == 5  # a value on an edge belongs to the cell above it
    assert cell(-1.01, 1.01) == 3  # just outside the box: its nearest cell
    raw = env.env.observation(np.array([0.6, 0.07], dtype=np.float32))  # MountainCar's own highest values
    assert cell(*raw) == 15


def test_tilings_are_grids_shifted_by_a_fraction_of_a_cell():
    # 2 grids of 4 cells per number (cells 0.5 wide), each with a 5th cell: 25 per grid. The second
    # grid is shifted by half a cell along both numbers (1/2 and 3/2 of a cell, modulo one).
    env = tabular.make_table_env("MountainCar-v0", 4, tilings=2)
    assert list(env.observation_space.nvec) == [50, 50]

    def cells(position: float, velocity: float) -> list[int]:
        return env.observation(np.array([position, velocity], dtype=np.float32)).tolist()

    assert cells(0.0, 0.0) == [2 * 5 + 2, 25 + 2 * 5 + 2]
    assert cells(-0.2, 0.0) == [1 * 5 + 2, 25 + 2 * 5 + 2]  # a different cell in grid 0, the same in grid 1
    assert cells(-1.0, -1.0) == [0, 25] and cells(1.0, 1.0) == [4 * 5 + 4, 25 + 4 * 5 + 4]


def test_epsilon_greedy_breaks_ties_at_random():
    rng = np.random.default_rng(0)
    assert {tabular.epsilon_greedy(np.zeros(3), 0.0, rng) for _ in range(100)} == {0, 1, 2}
    assert {tabular.epsilon_greedy(np.array([0.0, 1.0, 0.0]), 0.0, rng) for _ in range(100)} == {1}


def main_code(*args) -> int:
    try:
        return tabular.main([str(a) for a in args])
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("args, message", [
    (["--env", "CartPole-v1"], "CartPole-v1 has unbounded observations"),
    (["--env", "LunarLander-v3"], "too many for a table; lower --bins (at most 7 for this env with --tilings 1)"),
    (["--env", "ALE/Pong-v5"], "train Atari games with run.py"),
    (["--env", "Acrobot-v1", "--tilings", "8"], "at most 9 for this env with --tilings 8"),
    (["--bins", "0"], "--bins must be at least 1"),  # a flag's error (settings' table has the rest) writes nothing too
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    assert main_code(*args, "--logdir", tmp_path / "runs") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("tabular") / "runs"
    # a plain table of 10 cells per number: fewer cells to learn, a coarser policy, sooner
    assert main_code("--tilings", 1, "--bins", 10, "--steps", 200_000, "--final-eval-episodes", 20, "--logdir", logdir,
                     "--name", "t") == 0
    return logdir / "t"


@pytest.mark.slow
def test_short_training_beats_a_random_agent_by_far(table_run):
    s = summary(table_run)
    # a random agent never reaches the flag in MountainCar's 200 steps: -200 in every episode
    assert s["status"] == "finished" and s["steps"] == 200_000 and s["final_eval_episodes"] == 20
    assert s["final_eval_mean"] >= -175, s["evals"]
    assert s["final_eval_mean"] == pytest.approx(s["best_eval_mean"], abs=25)  # final.npy is the best evaluation's
    assert {p.name for p in table_run.glob("*.npy")} == {"step_100000.npy", "step_200000.npy", "last.npy", "final.npy"}
    assert np.load(table_run / "final.npy").shape == (1, 100, 3)  # (grids, cells per grid, actions)


@pytest.mark.slow
def test_the_table_plays_as_users_call_it(table_run, tmp_path):
    r = script("tabular.py", "--model", table_run / "final.npy", "--eval", "--episodes", 20, "--seed", 10_000,
               cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = imported_modules(r)
    assert r.returncode == 0, r.stderr
    assert "gymnasium" in imported and not {"tensorflow", "keras"} & imported  # numpy only
    mean = float(r.stdout.split("mean return ")[1].split()[0])
    assert mean == pytest.approx(summary(table_run)["final_eval_mean"], abs=0.05)  # the same 20 start states
    np.save(tmp_path / "old.npy", np.load(table_run / "final.npy")[0])  # as tables without grids were saved
    r = script("tabular.py", "--model", tmp_path / "old.npy", "--eval", "--episodes", 20, "--seed", 10_000,
               cwd=tmp_path)
    assert r.returncode == 0 and f"mean return {mean:.1f}" in r.stdout, r.stderr
    r = script("tabular.py", "--env", "Acrobot-v1", "--model", table_run / "final.npy", "--eval", cwd=tmp_path)
    assert r.returncode == 2 and "not a table for Acrobot-v1" in r.stderr and len(r.stderr.splitlines()) == 1


@pytest.mark.slow
def test_ctrl_c_then_resume_finishes_the_run(tmp_path):
    run_dir = tmp_path / "runs" / "stopped"
    cmd = [sys.executable, str(ROOT / "tabular.py"), "--steps", "100000", "--snapshot-every", "5000",
           "--eval-every", "20000", "--eval-episodes", "5", "--final-eval-episodes", "5",
           "--logdir", str(tmp_path / "runs"), "--name", "stopped"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run_dir / "checkpoint.npz").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and f"python tabular.py --resume {run_dir}" in err, err
    stopped = json.loads((run_dir / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and 5_000 <= stopped["steps"] < 100_000
    assert (run_dir / f"step_{stopped['steps']}.npy").is_file()
    r = script("tabular.py", "--resume", run_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = summary(run_dir)
    assert s["status"] == "finished" and s["steps"] == 100_000 and s["episodes"] > stopped["episodes"]
    assert [step for step, _ in s["evals"]] == list(range(20_000, 100_001, 20_000))
