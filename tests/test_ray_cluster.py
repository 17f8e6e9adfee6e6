"""bench.py --address on a real Ray cluster: one started here by `ray start --head --block`, in
a process group of its own, on loopback only, and ended by signalling exactly that group (not
`ray stop`, which would stop every Ray on the machine: other benches, other tests)."""

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive_in_group(pgid: int) -> list[str]:
    """The processes of a process group that still run (zombies excluded)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(stat.parent.name)
    return alive


def ready(port: int, temp_dir: Path) -> bool:
    """The head is up when its GCS accepts connections and its raylet has made its socket."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) != 0:
            return False
    return (temp_dir / "session_latest" / "sockets" / "raylet").exists()


@pytest.fixture
def token_env(tmp_path) -> dict:
    """Token authentication, as Ray's docs set it up: RAY_AUTH_MODE=token on the cluster and on
    every driver, and the token in ~/.ray/auth_token (here a home folder of the test's own)."""
    (tmp_path / "home" / ".ray").mkdir(parents=True)
    (tmp_path / "home" / ".ray" / "auth_token").write_text("a" * 64)
    return {**os.environ, "HOME": str(tmp_path / "home"), "RAY_AUTH_MODE": "token"}


@pytest.fixture
def ray_cluster(token_env):
    """A one-node Ray cluster of our own; yields (address, its temp dir); ends its process group."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    # Every port that has a fixed default gets a free one, so that another Ray here cannot clash.
    head = subprocess.Popen([RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--ray-client-server-port", str(free_port()), "--dashboard-port", str(free_port()),
                             "--dashboard-agent-listen-port", str(free_port()), "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=token_env)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while not ready(port, Path(temp_dir)):
            assert head.poll() is None, "ray start --head exited"
            assert time.time() < deadline, "the Ray cluster did not come up in 120 s"
            time.sleep(0.5)
        yield address, Path(temp_dir)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the head may have died with its group
            os.killpg(head.pid, signal.SIGTERM)  # the head's own services leave, most of them
        try:
            head.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # the whole group may be gone already
            os.killpg(head.pid, signal.SIGKILL)  # and what did not (measured: some ignore SIGTERM)
        head.wait(timeout=20)
        deadline = time.time() + 30
        while alive_in_group(head.pid) and time.time() < deadline:
            time.sleep(0.5)
        assert not alive_in_group(head.pid), f"Ray processes left: {alive_in_group(head.pid)}"


def test_bench_runs_a_grid_on_a_real_ray_cluster(ray_cluster, token_env, tmp_path):
    address, temp_dir = ray_cluster
    bench = subprocess.run(
        [sys.executable, str(ROOT / "bench.py"), "--address", address, "--grid", "lr=1e-3", "--seeds", "2",
         "--name", "cluster", "--env", "CartPole-v1", "--steps", "1500", "--", "--learning-starts", "500",
         "--eval-every", "500", "--eval-episodes", "2", "--final-eval-episodes", "3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=400,
        env={**token_env, "SDL_VIDEODRIVER": "dummy"})
    assert bench.returncode == 0, bench.stderr
    assert f"Ray, {address}" in bench.stderr
    rows = list(csv.DictReader(open(tmp_path / "bench" / "cluster" / "results.csv")))
    assert [(row["seed"], row["status"]) for row in rows] == [("0", "finished"), ("1", "finished")]
    for row in rows:  # each row reports its own trial's result, written by run.py on the cluster
        trained = json.loads((tmp_path / "bench" / "cluster" / "runs" / f"lr=1e-3_seed{row['seed']}" /
                              "summary.json").read_text())
        assert float(row["final_eval_mean"]) == pytest.approx(trained["final_eval_mean"])
    # The trials ran on that cluster: bench.py connected to it as a driver, and its workers ran them.
    logs = temp_dir / "session_latest" / "logs"
    assert len(list(logs.glob("python-core-driver-*.log"))) == 1
    assert len(list(logs.glob("python-core-worker-*.log"))) >= 2
