"""Keras files: writing a .keras snapshot crash-safely, reading one back (in float32) with a one-line
error when it does not fit the env, and the optimizer's state that a checkpoint carries.
"""

import functools
from pathlib import Path

import gymnasium as gym
import keras
from keras.src.saving import saving_lib

from plumbing.atomic import write_atomically
from plumbing.settings import fail


def load_model(path: str, env: gym.Env, actor_critic: bool = False) -> keras.Model:
    """Load a .keras or .h5 snapshot, computing in float32 as a training's evaluations do, and check it
    fits `env` (a Q-network, or with `actor_critic` a policy-gradient network), or fail with one line."""
    try:
        model = keras.models.load_model(path, compile=False)  # playing needs no optimizer
    except Exception as e:  # noqa: BLE001 - any reason a file is not a model gets the same answer
        fail(f"{path} is not a loadable Keras model ({type(e).__name__}); pass a .keras or .h5 snapshot")
    obs_shape, n_actions = tuple(env.observation_space.shape), int(env.action_space.n)
    shapes = [tuple(t.shape) for t in model.inputs], [tuple(t.shape) for t in model.outputs]
    expected = (([(None, *obs_shape)], [(None, n_actions), (None, 1)]) if actor_critic
                else ([(None, *obs_shape), (None, n_actions)], [(None, n_actions)]))
    if shapes != expected:
        fail(f"{path} has inputs {shapes[0]} and outputs {shapes[1]}, but this script's network for {env.spec.id} "
             f"has inputs {expected[0]} and outputs {expected[1]}; pass the --env it was trained on, or a "
             "snapshot this script wrote")
    return in_float32(model)


def in_float32(model: keras.Model) -> keras.Model:
    """The model computing in float32 throughout: a --precision bfloat16 network rebuilt layer by layer with
    float32 compute, sharing nothing with it (its weights are float32 already, and are copied)."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    copy = keras.models.clone_model(model, clone_function=lambda layer: layer.__class__.from_config(
        {**layer.get_config(), "dtype": "float32"}))
    copy.set_weights(model.get_weights())
    return copy


def save_model(model: keras.Model, path: Path) -> None:
    """A .keras snapshot that --model can load, written atomically (atomic.py)."""
    write_atomically(path, model.save)


# Keras 3.15 stores the attribute skip-sets of its saving code under one name and looks them up
# under another, so every save builds reference layers whose memory is never given back. Caching
# the function stops that growth.
saving_lib.get_attr_skipset = functools.cache(saving_lib.get_attr_skipset)


def optimizer_variables(model: keras.Model) -> list:
    """Adam's step count and moments. Keras creates the moments at the first update, so a
    checkpoint taken before learning starts builds them first (as zeros, as the update would)."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return model.optimizer.variables


def restore_optimizer(model: keras.Model, values: list) -> None:
    """Put a checkpoint's optimizer_variables back."""
    variables = optimizer_variables(model)
    if len(values) != len(variables):
        raise ValueError(f"{len(values)} optimizer arrays for {len(variables)} variables")
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
