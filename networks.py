"""The Q-network and the policy that acts with it.

`create_model` builds Q(s, .) with the action-mask input; `load_model` reads a snapshot back;
`Policy` turns a Q-network into actions (greedy or epsilon-greedy) as fast as the network
allows: a numpy copy of the weights for the dense networks built here, one compiled call
for any other network.
"""

from pathlib import Path

import gymnasium as gym
import keras
import numpy as np
import tensorflow as tf

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


def dense_torso(obs, units: int):
    """Two ReLU layers, for observations that are a few numbers (classic control, Box2D)."""
    h = obs
    for i in range(HIDDEN_LAYERS):
        h = keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")(h)
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


def load_model(path: str, env: gym.Env) -> keras.Model:
    """Load a .keras or .h5 snapshot and check it fits `env`, or fail with one line."""
    if not Path(path).is_file():
        fail(f"no model file at {path}; pass a snapshot such as runs/<name>/final.keras")
    try:
        model = keras.models.load_model(path, compile=False)  # playing needs no optimizer
    except Exception as e:  # noqa: BLE001 - any reason a file is not a model gets the same answer
        fail(f"{path} is not a loadable Keras model ({type(e).__name__}); pass a .keras or .h5 snapshot")
    obs_shape, n_actions = tuple(env.observation_space.shape), int(env.action_space.n)
    shapes = [tuple(t.shape) for t in model.inputs]
    if shapes != [(None, *obs_shape), (None, n_actions)] or model.output_shape != (None, n_actions):
        fail(f"{path} has inputs {shapes} and output {model.output_shape}, but {env.spec.id} has "
             f"observations of shape {obs_shape} and {n_actions} actions; pass the --env it was trained on")
    return model


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
        # Where each variable sits in model.trainable_variables, the order the update returns them in.
        self.paths = [v.path for v in model.trainable_variables]
        self.compiled = None if self.dense else tf.function(self._keras_q_values, reduce_retracing=True)
        self.refresh()

    def refresh(self, values: list | None = None) -> None:
        """Copy the current weights (or these values of model.trainable_variables) for acting, as
        (kernel, bias) per layer: the hidden layers in order, and the heads (q, or value and advantage)."""
        if not self.dense:
            return
        values = self.model.trainable_variables if values is None else values
        w = {path: np.asarray(v) for path, v in zip(self.paths, values, strict=True)}
        heads = ["q"] if self.dueling == "none" else ["value", "advantage"]
        self.hidden_weights = [(w[f"{name}/kernel"], w[f"{name}/bias"]) for name in self.hidden]
        self.head_weights = [(w[f"{name}/kernel"], w[f"{name}/bias"]) for name in heads]

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q(s, a) for a batch of observations, every action."""
        if not self.dense:
            return self.compiled(tf.convert_to_tensor(obs, self.model.inputs[0].dtype)).numpy()
        h = obs
        for kernel, bias in self.hidden_weights:
            h = np.maximum(h @ kernel + bias, 0.0)
        if self.dueling == "none":
            ((kernel, bias),) = self.head_weights
            return h @ kernel + bias
        (v_kernel, v_bias), (a_kernel, a_bias) = self.head_weights
        value, advantage = h @ v_kernel + v_bias, h @ a_kernel + a_bias
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
