"""Our event files as TensorBoard reads them: the library's reader and a real server over HTTP."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

EXPECTED = {"episode/return", "episode/length", "train/loss", "train/td_error", "train/target_distance",
            "train/epsilon", "perf/steps_per_second",
            "perf/rss_mb", "eval/mean_return", "eval/avg_max_q", "eval/final_mean_return"}


def test_event_file_has_the_expected_scalars(trained_run):
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained_run), size_guidance={"tensors": 0})  # 0: keep every point
    acc.Reload()
    tags = set(acc.Tags()["tensors"])  # tf.summary scalars are stored as tensors
    assert EXPECTED <= tags, EXPECTED - tags
    returns = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("episode/return")]
    assert len(returns) == 15 and all(-200 <= r <= 0 for r in returns)  # 3000 steps = 15 MountainCar episodes
    assert [e.step for e in acc.Tensors("eval/mean_return")] == [1000, 2000, 3000]
    assert "settings" in tags  # the run's flags as a text table
    assert not {"train/is_weight", "train/tau"} & tags  # only logged when --prioritized / --tau are on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def tensorboard_server(trained_run):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(trained_run.parent),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                tags = get_json(base + "/data/plugin/scalars/tags")
                if "short" in tags:  # the run has been loaded
                    break
            except OSError:
                pass
            assert time.time() < deadline and proc.poll() is None, "tensorboard did not come up"
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_tensorboard_serves_our_scalars_over_http(tensorboard_server):
    tags = get_json(tensorboard_server + "/data/plugin/scalars/tags")["short"]
    assert {"episode/return", "eval/mean_return", "train/loss"} <= set(tags)
    query = urllib.parse.urlencode({"run": "short", "tag": "eval/mean_return"})
    points = get_json(f"{tensorboard_server}/data/plugin/scalars/scalars?{query}")
    assert [p[1] for p in points] == [1000, 2000, 3000]  # [wall_time, step, value] rows
    assert all(-200 <= p[2] <= -100 for p in points)
