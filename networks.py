"""The networks and the objects that act with them.

`create_model` builds DQN's Q(s, .) with the action-mask input, and `Policy` turns it into
actions (greedy or epsilon-greedy) as fast as the network allows: a numpy copy of the weights
for the dense networks built here, one compiled call for any other network.
`create_actor_critic` builds the policy-gradient agents' pi(.|s) and V(s), and `ActorCritic`
samples and values with a numpy copy of it. `load_model` reads a snapshot back, `save_model`
writes one.
"""

import functools
from pathlib import Path

import gymnasium as gym
import keras
import numpy as np
import tensorflow as tf
from keras.src.saving import saving_lib

from atomic import write_atomically
from settings import fail


@keras.saving.register_keras_serializable(package="dqn")
class Dueling(keras.layers.Layer):
    """Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a'), or - max_a' A(s, a') (Wang et al. 2016).

    Subtracting the mean (or max) advantage makes V and A identifiable: without it any
    constant could move between them. The max form makes A(s, greedy a) = 0, so V(s) is
    the greedy action's value; the mean form is what the paper found more stable.
    """

    def __init__(self, mode: str = "avg", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs):
        value, advantage = inputs
        reduce = keras.ops.mean if self.mode == "avg" else keras.ops.max
        return value + advantage - reduce(advantage, axis=1, keepdims=True)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


HIDDEN_LAYERS = 2


def dense_torso(obs, units: int, prefix: str = "hidden"):
    """Two ReLU layers, for observations that are a few numbers (classic control, Box2D)."""
    h = obs
    for i in range(HIDDEN_LAYERS):
        h = keras.layers.Dense(units, activation="relu", name=f"{prefix}_{i}")(h)
    return h


def conv_torso(frames):
    """The Nature DQN torso (Mnih et al. 2015) for stacks of 84x84 uint8 frames, oldest first.
    The frames stay uint8 in the replay (4x smaller than float32) and are scaled to [0, 1] here."""
    h = keras.layers.Permute((2, 3, 1), name="channels_last")(frames)  # (stack, 84, 84) -> (84, 84, stack)
    h = keras.layers.Rescaling(1 / 255, name="scale")(h)
    for i, (filters, size, stride) in enumerate([(32, 8, 4), (64, 4, 2), (64, 3, 1)]):
        h = keras.layers.Conv2D(filters, size, stride, activation="relu", name=f"conv_{i}")(h)
    return keras.layers.Dense(512, activation="relu", name="features")(keras.layers.Flatten(name="flatten")(h))


def create_model(obs_shape: int | tuple[int, ...], n_actions: int, units: int, lr, clip_norm: float,
                 loss: str = "mse", dueling: str = "none") -> keras.Model:
    """Q(s, .) for all actions, multiplied by an action mask.

    With an all-ones mask one forward pass gives every action's Q-value (for acting and
    for the target); with a one-hot mask it gives only the taken action's, which is what the
    loss compares with its target. With `dueling` avg or max the last layer is split into a
    value head and an advantage head (the mask applies after them). The layers are named
    (hidden_0, hidden_1, q or value/advantage/dueling) so that `Policy` can find them.
    A 3-D observation (a stack of frames) gets the convolutional torso instead of the dense one.
    """
    obs_shape = (obs_shape,) if isinstance(obs_shape, int) else tuple(obs_shape)
    frames = len(obs_shape) == 3
    obs = keras.Input(obs_shape, dtype="uint8" if frames else "float32", name="obs")
    mask = keras.Input((n_actions,), name="action_mask")
    h = conv_torso(obs) if frames else dense_torso(obs, units)
    if dueling == "none":
        q = keras.layers.Dense(n_actions, name="q")(h)
    else:
        value, advantage = keras.layers.Dense(1, name="value")(h), keras.layers.Dense(n_actions, name="advantage")(h)
        q = Dueling(dueling, name="dueling")([value, advantage])
    model = keras.Model([obs, mask], keras.layers.Multiply(name="masked_q")([q, mask]))
    # A loss object, not the string "mse": .h5 files of models compiled with "mse" do not load back.
    model.compile(optimizer=keras.optimizers.Adam(lr, global_clipnorm=clip_norm),
                  loss=keras.losses.Huber() if loss == "huber" else keras.losses.MeanSquaredError())
    return model


def create_actor_critic(obs_size: int, n_actions: int, units: int, shared: bool, lr: float,
                        clip_norm: float) -> keras.Model:
    """The policy pi(.|s) as logits, and the baseline V(s), for reinforce.py and a2c.py.

    With `shared` one torso feeds both heads (fewer weights, but the value loss then shapes the
    policy's features too); otherwise the critic has its own (critic_0, critic_1). The logits
    start near 0, so the first policy is close to uniform: every action gets tried.
    """
    obs = keras.Input((obs_size,), name="obs")
    h = dense_torso(obs, units)
    logits = keras.layers.Dense(n_actions, kernel_initializer=keras.initializers.Orthogonal(0.01), name="logits")(h)
    value = keras.layers.Dense(1, name="value")(h if shared else dense_torso(obs, units, "critic"))
    model = keras.Model(obs, [logits, value])
    model.compile(optimizer=keras.optimizers.Adam(lr, global_clipnorm=clip_norm))
    return model


def load_model(path: str, env: gym.Env, actor_critic: bool = False) -> keras.Model:
    """Load a .keras or .h5 snapshot and check it fits `env` (a Q-network, or with `actor_critic`
    a policy-gradient network), or fail with one line."""
    if not Path(path).is_file():
        fail(f"no model file at {path}; pass a snapshot such as runs/<name>/final.keras")
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
    return model


def save_model(model: keras.Model, path: Path) -> None:
    """A .keras snapshot that --model can load, written atomically (atomic.py)."""
    write_atomically(path, model.save)


# Keras 3.15 stores the attribute skip-sets of its saving code as "saving_attr_skipset_*" but looks
# them up as "saving_attr_skiplist_*", so every save builds new reference layers whose memory is
# never given back (~70 KB a snapshot). Caching the function stops that growth.
saving_lib.get_attr_skipset = functools.cache(saving_lib.get_attr_skipset)


def optimizer_variables(model: keras.Model) -> list:
    """Adam's step count and moments. Keras creates the moments at the first update, so a
    checkpoint taken before learning starts builds them first (as zeros, as the update would)."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return model.optimizer.variables


def restore_optimizer(model: keras.Model, values: list[np.ndarray]) -> None:
    """Put a checkpoint's optimizer_variables back."""
    variables = optimizer_variables(model)
    if len(values) != len(variables):
        raise ValueError(f"{len(values)} optimizer arrays for {len(variables)} variables")
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def dense_weights(model: keras.Model, names: list[str], values: list | None = None) -> list[tuple]:
    """(kernel, bias) of each named dense layer as numpy arrays, from the model's trainable variables
    (or these values of them, in the same order, as the compiled updates return them)."""
    values = model.trainable_variables if values is None else values
    w = {v.path: np.asarray(value) for v, value in zip(model.trainable_variables, values, strict=True)}
    return [(w[f"{name}/kernel"], w[f"{name}/bias"]) for name in names]


def dense_layers(layers: list[tuple], h: np.ndarray, relu_last: bool) -> np.ndarray:
    """Dense layers (dense_weights) in numpy, one after the other, ReLU after each (and after the
    last one only if `relu_last`)."""
    for i, (kernel, bias) in enumerate(layers):
        h = h @ kernel + bias
        if relu_last or i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


# Acting calls the network once per env step. A Keras call costs ~1 ms and model.predict
# ~50 ms, the env step ~7 us, so a dense network acts from a numpy copy of its weights
# (a few us), refreshed after each training call.


class Policy:
    """Greedy and epsilon-greedy actions from a Q-network (all-ones mask).

    For the networks `create_model` builds, the forward pass runs in numpy on a copy of the
    weights, with the layers found by name; any other network (an older snapshot, a conv
    net) is called through one compiled TensorFlow function instead.
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self.n_actions = int(model.output_shape[-1])
        names = {layer.name for layer in model.layers}
        self.hidden = [f"hidden_{i}" for i in range(HIDDEN_LAYERS)]
        heads = {"q"} if "q" in names else {"value", "advantage", "dueling"}
        self.dense = (set(self.hidden) | heads).issubset(names) and all(
            model.get_layer(name).activation is keras.activations.relu for name in self.hidden)
        self.dueling = model.get_layer("dueling").mode if "dueling" in names else "none"
        self.compiled = None if self.dense else tf.function(self._keras_q_values, reduce_retracing=True)
        self.refresh()

    def refresh(self, values: list | None = None) -> None:
        """Copy the current weights (or these values of model.trainable_variables) for acting."""
        if self.dense:
            heads = ["q"] if self.dueling == "none" else ["value", "advantage"]
            self.torso = dense_weights(self.model, self.hidden, values)
            self.heads = dense_weights(self.model, heads, values)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q(s, a) for a batch of observations, every action."""
        if not self.dense:
            return self.compiled(tf.convert_to_tensor(obs, self.model.inputs[0].dtype)).numpy()
        h = dense_layers(self.torso, obs, relu_last=True)
        if self.dueling == "none":
            return dense_layers(self.heads, h, relu_last=False)
        value, advantage = (dense_layers([head], h, relu_last=False) for head in self.heads)
        reduce = np.mean if self.dueling == "avg" else np.max
        return value + advantage - reduce(advantage, axis=1, keepdims=True)

    def _keras_q_values(self, obs):
        return self.model([obs, tf.ones((tf.shape(obs)[0], self.n_actions))])

    def greedy(self, obs: np.ndarray) -> int:
        return int(self.greedy_actions(obs[None])[0])

    def greedy_actions(self, obs: np.ndarray) -> np.ndarray:
        """The greedy action for each row of a batch of observations."""
        return np.argmax(self.q_values(obs), axis=1)

    def epsilon_greedy(self, obs: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
        """One action per env of a vector env (obs: one row per env): random with probability
        epsilon each, otherwise greedy, from one forward pass over all envs (always the same batch
        shape, so a compiled network is traced once). With one env it draws from `rng` what the
        single-env loop before it drew (a uniform number, then an action only when exploring), so
        a seed's classic-control run is unchanged."""
        explore = rng.random(len(obs)) < epsilon
        explorers = np.count_nonzero(explore)
        if explorers == len(obs):
            return rng.integers(self.n_actions, size=explorers)
        actions = self.greedy_actions(obs)
        if explorers:
            actions[explore] = rng.integers(self.n_actions, size=explorers)
        return actions


class ActorCritic:
    """Sampled and greedy actions, and values, from an actor-critic network, in numpy on a copy of
    its weights (refreshed after each update), with the layers found by name."""

    def __init__(self, model: keras.Model):
        self.model = model
        torso = [f"hidden_{i}" for i in range(HIDDEN_LAYERS)]
        separate = "critic_0" in {layer.name for layer in model.layers}
        self.actor_layers = [*torso, "logits"]
        self.critic_layers = [*([f"critic_{i}" for i in range(HIDDEN_LAYERS)] if separate else torso), "value"]
        self.refresh()

    def refresh(self, values: list | None = None) -> None:
        self.actor = dense_weights(self.model, self.actor_layers, values)
        self.critic = dense_weights(self.model, self.critic_layers, values)

    def probabilities(self, obs: np.ndarray) -> np.ndarray:
        logits = dense_layers(self.actor, obs, relu_last=False)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))  # softmax, shifted so exp cannot overflow
        return e / e.sum(axis=1, keepdims=True)

    def values(self, obs: np.ndarray) -> np.ndarray:
        """V(s) for a batch of observations."""
        return dense_layers(self.critic, obs, relu_last=False)[:, 0]

    def sample(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One action per row, drawn from pi(.|s): the first whose cumulative probability passes a uniform number."""
        cumulative = self.probabilities(obs).cumsum(axis=1)
        u = rng.random((len(obs), 1)) * cumulative[:, -1:]  # scaled: the sum may round to just under 1
        return (cumulative <= u).sum(axis=1)

    def greedy(self, obs: np.ndarray) -> int:
        """The most probable action for one observation."""
        return int(np.argmax(dense_layers(self.actor, obs[None], relu_last=False)[0]))
