"""Acting fast: the forward pass of a small dense network in numpy, on a copy of its weights.

Acting calls the network once per env step, and a Keras call costs far more than a classic env's
step (docs/results.md), so run.py's Q-values and the policy-gradient agents' actions come from
numpy copies of their dense layers, refreshed after each update; any other network (a conv net,
an older snapshot) is called through one compiled TensorFlow function instead. The numbers are
the network's own: the tests compare them with Keras'.
"""

import keras
import numpy as np
import tensorflow as tf

HIDDEN_LAYERS = ["hidden_0", "hidden_1"]  # the names run.py and policy_gradient.py give their torsos


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


class QValues:
    """Q(s, a) for a batch of observations and every action (all-ones mask): call it with obs.

    For the dense networks run.py builds, the forward pass runs in numpy on a copy of the
    weights, with the layers found by name; any other network is one compiled call.
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self.n_actions = int(model.output_shape[-1])
        names = {layer.name for layer in model.layers}
        heads = {"q"} if "q" in names else {"value", "advantage", "dueling"}
        self.dense = (set(HIDDEN_LAYERS) | heads).issubset(names) and all(
            model.get_layer(name).activation is keras.activations.relu for name in HIDDEN_LAYERS)
        self.dueling = model.get_layer("dueling").mode if "dueling" in names else "none"
        self.compiled = None if self.dense else tf.function(self._keras_q_values, reduce_retracing=True)
        self.refresh()

    def refresh(self, values: list | None = None) -> None:
        """Copy the current weights (or these values of model.trainable_variables) for acting."""
        if self.dense:
            heads = ["q"] if self.dueling == "none" else ["value", "advantage"]
            self.torso = dense_weights(self.model, HIDDEN_LAYERS, values)
            self.heads = dense_weights(self.model, heads, values)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
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


class ActorCritic:
    """Sampled and greedy actions, and values, from an actor-critic network, in numpy on a copy of
    its weights (refreshed after each update), with the layers found by name."""

    def __init__(self, model: keras.Model):
        self.model = model
        separate = "critic_0" in {layer.name for layer in model.layers}
        self.actor_layers = [*HIDDEN_LAYERS, "logits"]
        self.critic_layers = [*(["critic_0", "critic_1"] if separate else HIDDEN_LAYERS), "value"]
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
