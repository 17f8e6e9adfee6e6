"""A trained Q-network outside training: exported for serving (a TensorFlow SavedModel, ONNX and
LiteRT, through Keras' own `model.export`), and an ONNX one played back with onnxruntime, which
needs no TensorFlow (see.py --policy). Each export takes a batch of observations and returns the
Q-values of every action; the greedy action is their argmax. Beside them, the Keras network itself
in the classic HDF5 format (`run.py --model DIR/model.h5 --view` plays it).
"""

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from plumbing.settings import check_export_dir, fail
from plumbing.system import flush_folder

# file or folder in the export -> Keras' name of its format
FORMATS = {"saved_model": "tf_saved_model", "model.onnx": "onnx", "model.tflite": "litert"}
KERAS_H5 = "model.h5"  # the network as trained, action-mask input included: what run.py --model loads


def q_network(model):
    """Observations -> Q-values: the trained model with its action mask left out, which is the same
    as an all-ones mask (Q * 1 = Q), so the served model has a single input."""
    import keras

    masked = model.layers[-1]  # create_model's last layer multiplies Q by the mask
    assert isinstance(masked, keras.layers.Multiply), masked
    return keras.Model(model.inputs[0], masked.input[0], name="q_network")


def export(model, env_id: str, directory: str) -> list[Path]:
    """Write the Q-network in every format to `directory`, all or nothing: into a hidden folder
    beside it first, renamed to `directory` when complete. The ONNX file records the env id."""
    check_export_dir(directory)
    target = Path(directory).resolve()
    network = q_network(model)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    except OSError as e:
        fail(f"--export {directory}: cannot write in {target.parent} ({e.strerror})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx looks up np.object, which numpy 2 renamed
            for name, fmt in FORMATS.items():
                network.export(str(staging / name), format=fmt, verbose=False)
            save_h5(model, staging / KERAS_H5)
        label_onnx(staging / "model.onnx", env_id)
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the export is not
        if target.is_dir():  # empty (check_export_dir): rename only replaces an empty folder
            target.rmdir()
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    flush_folder(target.parent)
    return [target / name for name in [*FORMATS, KERAS_H5]]


def save_h5(model, path: Path) -> None:
    """Save the model as Keras HDF5 without Keras' warning (through absl's logger) that the format is legacy:
    it is, and --export was asked for it."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        model.save(path)
    finally:
        absl.setLevel(level)


def label_onnx(path: Path, env_id: str) -> None:
    """Record the env in the ONNX file's metadata, so that see.py --policy knows what to play."""
    import onnx

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"env_id": env_id})
    onnx.save(proto, str(path))


def onnx_q_values(path: str) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """An exported ONNX Q-network as a function obs -> Q-values, and what it expects: its input's
    shape (without the batch), dtype, number of actions and env id (if recorded)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        fail(f"--policy {path}: no such file; export one with python run.py --model MODEL --export DIR")
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for files that are not ONNX
        fail(f"--policy {path}: not an ONNX model this can play ({str(e).splitlines()[0][:200]}); "
             "export one with python run.py --model MODEL --export DIR")
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    dtype = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}.get(inp.type)
    if dtype is None or not all(isinstance(d, int) for d in [*inp.shape[1:], out.shape[-1]]):
        fail(f"--policy {path}: expected a Q-network taking a batch of observations, got input {inp.shape} "
             f"{inp.type} and output {out.shape}")
    expects = dict(shape=tuple(inp.shape[1:]), dtype=dtype, n_actions=out.shape[-1],
                   env_id=session.get_modelmeta().custom_metadata_map.get("env_id"))
    return lambda obs: session.run(None, {inp.name: np.asarray(obs, dtype)})[0], expects


def check_fits(path: str, expects: dict, env) -> None:
    """A one-line error if the ONNX Q-network was not made for this env's observations and actions."""
    shape, n = env.observation_space.shape, env.action_space.n
    if expects["shape"] != shape or expects["n_actions"] != n:
        made_for = f" (exported from {expects['env_id']})" if expects["env_id"] else ""
        fail(f"--policy {path} takes observations of shape {expects['shape']} and scores {expects['n_actions']} "
             f"actions{made_for}, but {env.spec.id} has shape {shape} and {n} actions; pass the right --env")
