"""Our curves as users see them: a real TensorBoard server over HTTP (test_training.py reads the
event files with TensorBoard's own reader)."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from conftest import summary


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


@pytest.mark.slow
def test_tensorboard_serves_our_scalars_over_http(tensorboard_server, trained_run):
    tags = get_json(tensorboard_server + "/data/plugin/scalars/tags")["short"]
    assert {"episode/return", "eval/mean_return", "train/loss"} <= set(tags)
    query = urllib.parse.urlencode({"run": "short", "tag": "eval/mean_return"})
    points = get_json(f"{tensorboard_server}/data/plugin/scalars/scalars?{query}")
    assert [[p[1], p[2]] for p in points] == summary(trained_run)["evals"]  # [wall_time, step, value] rows
