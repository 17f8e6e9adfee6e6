"""--precision: when bfloat16 is native (auto stays float32), a bfloat16 update that moves Q as the
float32 one does, float32 where it matters (weights, Q-values, loss, optimizer), and a run that
resumes in the precision it started in."""

import json
import os
import re
import signal
import threading
import time

import keras
import numpy as np
import pytest
from conftest import run_main

import run
from atari import conv_torso
from plumbing import settings, system
from plumbing.envs import make_env
from plumbing.keras_files import load_model, save_model
from replay_buffer import Batch

AVX512_BF16 = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
AMX = "flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n"
AVX2 = "flags\t\t: fpu sse2 avx2 fma\n"


@pytest.mark.parametrize("flags, environ, platform, native", [
    (AVX512_BF16, {}, "linux", True),
    (AMX, {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, "linux", True),
    (AVX2, {}, "linux", False),  # TensorFlow would emulate bfloat16: several times slower
    (AVX512_BF16, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "linux", False),  # capped below the bfloat16 instructions
    (AVX512_BF16, {"ONEDNN_MAX_CPU_ISA": "avx512_core_vnni"}, "linux", False),
    (AMX, {"TF_ENABLE_ONEDNN_OPTS": "0"}, "linux", False),  # TensorFlow's own kernels emulate it
    (AMX, {}, "darwin", False),  # no /proc/cpuinfo to tell: float32 unless told
])
def test_native_bfloat16_needs_the_instructions_onednn_and_no_cap_below_them(tmp_path, flags, environ, platform,
                                                                              native):
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\n{flags}\nprocessor\t: 1\n{flags}")
    assert system.native_bfloat16(environ, platform, str(tmp_path / "cpuinfo")) is native
    assert not system.native_bfloat16({}, "linux", str(tmp_path / "missing"))


@pytest.mark.parametrize("flags, environ, platform, fails", [
    (AVX2, {}, "linux", True),  # oneDNN (on unless told) has no bfloat16 convolution below AVX-512
    (AVX512_BF16, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "linux", True),
    (AVX512_BF16, {"ONEDNN_MAX_CPU_ISA": "avx2_vnni"}, "linux", True),
    (AVX2, {"TF_ENABLE_ONEDNN_OPTS": "0"}, "linux", False),  # TensorFlow's own kernels: slow, but they run
    ("flags\t\t: fpu sse2 avx2 avx512f\n", {}, "linux", False),  # oneDNN emulates bfloat16 with AVX-512
    (AVX512_BF16, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "linux", False),
    ("Features\t: fp asimd bf16\n", {}, "linux", False),  # not x86-64: no such rule known
    (AVX2, {}, "darwin", False),
])
def test_bfloat16_convolutions_fail_where_onednn_has_no_avx512(tmp_path, flags, environ, platform, fails):
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\n{flags}")
    assert system.bfloat16_convolutions_fail(environ, platform, str(tmp_path / "cpuinfo")) is fails


def test_a_bfloat16_conv_net_is_refused_in_one_line_where_it_cannot_run(tmp_path, monkeypatch, capsys):
    """Without AVX-512 (here: capped at AVX2), oneDNN would stop the training at its first update with a
    traceback: a new run and the resume of a bfloat16 run stop before anything is written, saying what to do."""
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert run_main("--env", "ALE/Pong-v5", "--precision", "bfloat16", "--logdir", tmp_path / "runs") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use --precision float32" in err and "ONEDNN_MAX_CPU_ISA=AVX2" in err, err
    assert not (tmp_path / "runs").exists()
    run_dir = tmp_path / "started-elsewhere"  # a bfloat16 run begun on a CPU with AVX-512
    run_dir.mkdir()
    (run_dir / "checkpoint.npz").write_bytes(b"")
    (run_dir / "args.json").write_text(json.dumps({"env": "ALE/Pong-v5", "precision": "bfloat16"}))
    assert run_main("--resume", run_dir) == 2
    assert f"use --resume {run_dir} --precision float32" in capsys.readouterr().err
    assert json.loads((run_dir / "args.json").read_text())["precision"] == "bfloat16"


def test_the_cpu_kind_is_named_by_its_best_instructions():
    assert system.cpu_kind({"avx2", "avx512f", "avx512_bf16", "amx_tile"}) == "AVX-512 with AMX"
    assert system.cpu_kind({"avx2", "avx512f", "avx512_bf16"}) == "AVX-512 with AVX512_BF16, no AMX"
    assert system.cpu_kind({"avx2", "avx512f"}) == "AVX-512 without AVX512_BF16"
    assert system.cpu_kind({"sse2", "avx2"}) == "AVX2 only" and system.cpu_kind(set()) == "unknown"


def test_auto_picks_float32_on_every_cpu_and_bfloat16_is_taken_when_asked(monkeypatch):
    """Until bfloat16 has learned Pong as float32 does on several seeds (docs/atari.md), auto is float32, even
    where bfloat16 is native."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert settings.parse_args(["--env", "ALE/Pong-v5"]).precision == "float32"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert settings.parse_args(["--env", "ALE/Pong-v5"]).precision == "float32"
    assert settings.parse_args(["--env", "CartPole-v1"]).precision == "float32"  # a dense net: slower in bfloat16
    assert settings.parse_args(["--env", "ALE/Pong-v5", "--precision", "float32"]).precision == "float32"
    assert settings.parse_args(["--env", "CartPole-v1", "--precision", "bfloat16"]).precision == "bfloat16"


def conv_network(precision: str, n_actions: int = 6) -> keras.Model:
    return run.create_model((4, 84, 84), n_actions, 0, 3e-4, 10.0, "huber", torso=conv_torso, obs_dtype="uint8",
                            precision=precision)


def test_a_bfloat16_network_keeps_its_weights_q_values_loss_and_optimizer_in_float32():
    model = conv_network("bfloat16")
    computing = {layer.name: layer.dtype_policy.name for layer in model.layers}
    assert {computing[f"conv_{i}"] for i in range(3)} == {"mixed_bfloat16"}
    assert computing["features"] == computing["q"] == computing["masked_q"] == "float32"  # Q-values in float32
    assert {w.dtype for w in model.weights} == {"float32"}
    target = conv_network("bfloat16")
    update = run.make_update(model, target)
    loss, td_errors, weights = update(minibatches(np.random.default_rng(0), 1))
    assert loss.dtype.name == td_errors.dtype.name == "float32" and {w.dtype.name for w in weights} == {"float32"}
    assert {v.dtype for v in model.optimizer.variables} <= {"float32", "int64"}  # Adam's moments, and its step


def minibatches(rng, g: int, b: int = 16) -> Batch:
    frames = lambda: rng.integers(0, 256, (g, b, 4, 84, 84), dtype=np.uint8)  # noqa: E731
    return Batch(frames(), rng.integers(6, size=(g, b)), rng.uniform(-1, 1, (g, b)).astype(np.float32), frames(),
                 np.zeros((g, b), np.float32), np.full((g, b), 0.97, np.float32))


@pytest.mark.numerics
def test_a_bfloat16_update_moves_the_taken_q_values_towards_their_targets_as_float32_does():
    """Both networks start from the same float32 weights and take 4 gradient steps on one minibatch. The
    taken Q-values move as float32 moves them, within 5% of float32's move (bfloat16 keeps 8 bits of
    mantissa, ~0.4% per number; the moves differed by 1.2% with oneDNN on, off and capped at AVX2), and
    their distance to the targets falls by at least 80% of float32's fall."""
    rng = np.random.default_rng(1)
    batch = minibatches(rng, 1)
    batch = Batch(*[np.repeat(field, 4, axis=0) for field in batch[:6]])  # the same minibatch 4 times
    keras.utils.set_random_seed(0)
    f32, f32_target = conv_network("float32"), conv_network("float32")
    bf16, bf16_target = conv_network("bfloat16"), conv_network("bfloat16")
    for net in (f32_target, bf16, bf16_target):
        net.set_weights(f32.get_weights())
    obs, taken = batch.obs[0], np.eye(6)[batch.action[0]]
    y = batch.reward[0] + 0.97 * f32_target([batch.next_obs[0], np.ones((16, 6))]).numpy().max(axis=1)

    def taken_q(model):  # in float32, so that only the weights differ
        f32.set_weights(model.get_weights())
        return f32([obs, taken]).numpy().sum(axis=1)

    before = taken_q(f32)
    run.make_update(bf16, bf16_target)(batch)
    after_bf16 = taken_q(bf16)
    f32.set_weights(bf16_target.get_weights())  # back to the start
    run.make_update(f32, f32_target)(batch)
    after_f32 = taken_q(f32)
    moved_f32, moved_bf16 = after_f32 - before, after_bf16 - before
    assert np.abs(moved_f32).mean() > 1e-3  # the steps moved the Q-values at all
    assert np.abs(moved_bf16 - moved_f32).mean() < 0.05 * np.abs(moved_f32).mean()
    closer_f32, closer_bf16 = np.abs(y - before) - np.abs(y - after_f32), np.abs(y - before) - np.abs(y - after_bf16)
    assert closer_f32.mean() > 0 and closer_bf16.mean() > 0.8 * closer_f32.mean()


@pytest.mark.slow
def test_a_run_resumes_in_the_precision_it_started_in_unless_told(tmp_path, capsys):
    """A bfloat16 Pong run stopped with Ctrl-C after its first snapshot resumes in bfloat16 (whatever auto
    would choose on this CPU); --resume with --precision float32 changes it, for the rest of the run."""
    flags = ["--env", "ALE/Pong-v5", "--precision", "bfloat16", "--threads", "1", "--num-envs", "4", "--steps", "1600",
             "--learning-starts", "200", "--train-freq", "40", "--gradient-steps", "1", "--buffer-size", "2000",
             "--snapshot-every", "400", "--eval-every", "0", "--final-eval-episodes", "0", "--logdir", tmp_path,
             "--name", "bf16"]
    run_dir = tmp_path / "bf16"
    interrupt_at_the_first_snapshot(run_dir / "step_400.keras")
    assert run_main(*flags) == 130
    emulated = ", emulated on this CPU" if not system.native_bfloat16(os.environ) else ""  # oneDNN is off here
    assert f"network: bfloat16{emulated}" in capsys.readouterr().out
    assert json.loads((run_dir / "args.json").read_text())["precision"] == "bfloat16"
    interrupt_at_the_first_snapshot(run_dir / "step_800.keras")
    assert run_main("--resume", run_dir) == 130
    resumed = capsys.readouterr().out
    assert f"network: bfloat16{emulated}" in resumed
    assert re.search(r"at step 4\d\d: epsilon \S+, \d+ frames in replay", resumed)  # Atari's replay holds frames
    assert re.search(r"the checkpoint at step 800 \(\d+ frames\)", resumed)
    assert computes_in(run_dir / "step_800.keras") == "mixed_bfloat16"  # the network the resumed run trained
    assert run_main("--resume", run_dir, "--precision", "float32") == 0
    assert "network: float32; replay: " in capsys.readouterr().out
    assert json.loads((run_dir / "args.json").read_text())["precision"] == "float32"
    assert computes_in(run_dir / "final.keras") == "float32"


def computes_in(path) -> str:
    """What a snapshot's first conv layer computes in, as the file says (load_model would make it float32)."""
    return keras.models.load_model(path, compile=False).get_layer("conv_0").dtype_policy.name


@pytest.mark.slow
def test_a_bfloat16_snapshot_plays_and_exports_in_float32(tmp_path):
    """--model and --export take a bfloat16 network's float32 weights into a float32 network: the Q-values of
    the float32 rebuild are close to the bfloat16 network's (bfloat16's precision), and every export holds
    float32 numbers only."""
    import onnx

    keras.utils.set_random_seed(0)
    trained = conv_network("bfloat16", n_actions=4)  # Breakout's
    save_model(trained, tmp_path / "bf16.keras")
    breakout = make_env("ALE/Breakout-v5")
    played = load_model(str(tmp_path / "bf16.keras"), breakout)
    assert {layer.dtype_policy.name for layer in played.layers} == {"float32"}
    for got, saved in zip(played.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(got, saved)
    obs = np.random.default_rng(0).integers(0, 256, (64, 4, 84, 84), dtype=np.uint8)
    ones = np.ones((64, 4), np.float32)
    q32, q16 = played([obs, ones]).numpy(), trained([obs, ones]).numpy()
    assert np.abs(q32 - q16).max() < 0.02 * np.abs(q32).max() and not np.array_equal(q32, q16)
    assert run_main("--model", tmp_path / "bf16.keras", "--env", "ALE/Breakout-v5", "--export", tmp_path / "out") == 0
    initializers = onnx.load(str(tmp_path / "out" / "model.onnx")).graph.initializer
    assert {onnx.TensorProto.DataType.Name(t.data_type) for t in initializers} <= {"FLOAT", "INT32", "INT64"}
    assert computes_in(tmp_path / "out" / "model.h5") == "float32"


def interrupt_at_the_first_snapshot(path) -> None:
    """Ctrl-C for this process as soon as `path` is written (the run checks for it between steps)."""
    def watch():
        deadline = time.monotonic() + 120
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=watch, daemon=True).start()
