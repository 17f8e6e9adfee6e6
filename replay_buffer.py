"""Experience replay: a fixed-size ring buffer of transitions on preallocated numpy arrays.

DQN learns from random minibatches of past transitions instead of the latest one, which
breaks the correlation between consecutive steps (Mnih et al. 2015). Storing each field in
its own preallocated array keeps `add` O(1) and lets `sample` gather a whole batch with one
fancy-indexing operation per field, with no Python loop over samples.

`store` takes one env step and turns it into an n-step transition (--n-step) before adding it;
prioritized replay (--prioritized) samples on a sum-tree. Atari's frames have a replay of their
own (frame_replay.py), which samples the same Batch.
"""

from collections import deque
from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
    """Sampled transitions, each field of shape `shape` (+ the observation's shape for obs)."""
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray  # the n-step return with --n-step
    next_obs: np.ndarray
    terminated: np.ndarray  # 1.0 only at a true termination: no bootstrap from next_obs
    discount: np.ndarray  # gamma**k for a transition that sums k rewards
    weight: np.ndarray | None = None  # importance weights (prioritized replay)
    index: np.ndarray | None = None  # where each transition is stored (to update its priority)


FIELDS = Batch._fields[:6]  # what every transition stores


class NStep:
    """Turns 1-step transitions into n-step ones (Sutton 1988; one of Rainbow's parts):
    (s_t, a_t, r_t + g r_t+1 + ... + g^(k-1) r_t+k-1, s_t+k, terminated, g^k), k = n except at
    an episode's end, where every pending transition is emitted with the rewards it has.
    After a termination they do not bootstrap; after a truncation they do, from the last state.
    """

    def __init__(self, n: int, gamma: float):
        self.n, self.gamma = n, gamma
        self.pending = deque()  # (obs, action, reward) not yet emitted, oldest first

    def push(self, obs, action: int, reward: float, next_obs, terminated: bool, truncated: bool) -> list[tuple]:
        """Add one env step; return the n-step transitions it completes, as ReplayBuffer.add arguments."""
        self.pending.append((obs, action, reward))
        out = []
        if terminated or truncated:
            while self.pending:
                out.append(self._emit(next_obs, terminated))
        elif len(self.pending) == self.n:
            out.append(self._emit(next_obs, False))
        return out

    def _emit(self, next_obs, terminated: bool) -> tuple:
        k = len(self.pending)
        ret = sum(self.gamma**j * r for j, (_, _, r) in enumerate(self.pending))
        obs, action, _ = self.pending.popleft()
        return obs, action, ret, next_obs, terminated, self.gamma**k


class ReplayBuffer:
    def __init__(self, capacity: int, obs_shape: tuple[int, ...], n_step: int = 1, gamma: float = 0.99,
                 obs_dtype=np.float32):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.n_step = NStep(n_step, gamma)  # the env steps not yet summed into an n-step transition
        self.obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.action = np.zeros(capacity, dtype=np.int32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        # Only true termination is stored: a time-limit truncation is not an end of the
        # MDP, so its next state still has a value to bootstrap from.
        self.terminated = np.zeros(capacity, dtype=np.float32)
        # gamma**k for a transition that sums k rewards (k = 1 unless n-step returns are on)
        self.discount = np.zeros(capacity, dtype=np.float32)
        self.size = 0  # number of valid transitions
        self.next = 0  # slot the next transition goes to; wraps around to 0

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in FIELDS)

    def store(self, obs, action: int, reward: float, next_obs, terminated: bool, truncated: bool) -> None:
        """One env step; adds the n-step transitions it completes (with n = 1: this step's)."""
        for transition in self.n_step.push(obs, action, reward, next_obs, terminated, truncated):
            self.add(*transition)  # `truncated` is deliberately not stored: it still bootstraps

    def add(self, obs, action: int, reward: float, next_obs, terminated: bool, discount: float) -> None:
        i = self.next
        self.obs[i] = obs
        self.action[i] = action
        self.reward[i] = reward
        self.next_obs[i] = next_obs
        self.terminated[i] = terminated
        self.discount[i] = discount
        self.next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, shape: int | tuple[int, ...]) -> Batch:
        """Uniformly sample transitions (with replacement); `shape` may be (updates, batch)."""
        return self.gather(rng.integers(0, self.size, size=shape))

    def gather(self, slots: np.ndarray, **extra) -> Batch:
        """The transitions stored at `slots`, plus `extra` fields (weight, index)."""
        return Batch(*(getattr(self, name)[slots] for name in FIELDS), **extra)

    def arrays(self) -> dict[str, np.ndarray]:
        """The contents and the write position, for a checkpoint (plumbing/dqn_run.py). The steps
        waiting in `n_step` are left out: a resumed run starts new episodes."""
        n = self.size
        return dict(next=self.next, capacity=self.capacity, **{name: getattr(self, name)[:n] for name in FIELDS})

    def restore(self, data) -> None:
        """Put back what `arrays` returned into this (already allocated) buffer."""
        if int(data["capacity"]) != self.capacity:
            raise ValueError(f"the saved replay has capacity {int(data['capacity'])}, this run uses {self.capacity}")
        n = len(data["action"])
        for name in FIELDS:
            getattr(self, name)[:n] = data[name]
        self.size, self.next = n, int(data["next"])


class SumTree:
    """A complete binary tree whose leaves hold priorities and whose every inner node holds
    the sum of its two children, so the root is the total. Finding the leaf where a running
    sum crosses a value, and changing a leaf, both take O(log n) - this is what makes
    sampling in proportion to priority cheap (Schaul et al. 2016, appendix B.2.1).

    Node 1 is the root, node i has children 2i and 2i+1, and the leaves are the last
    `leaves` nodes. Every method works on whole arrays of indices at once.
    """

    def __init__(self, capacity: int):
        self.leaves = 1 << max(capacity - 1, 0).bit_length()  # the next power of two >= capacity
        self.depth = self.leaves.bit_length() - 1
        self.nodes = np.zeros(2 * self.leaves)  # float64: sums of many small numbers

    def total(self) -> float:
        return float(self.nodes[1])

    def get(self, index) -> np.ndarray:
        return self.nodes[np.asarray(index) + self.leaves]

    def set(self, index, priority) -> None:
        """Set leaves, then recompute their ancestors level by level up to the root.
        Repeated indices are fine: the last value wins and parents are recomputed from it."""
        node = np.asarray(index).ravel() + self.leaves
        self.nodes[node] = np.asarray(priority).ravel()
        for _ in range(self.depth):
            node //= 2
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1]

    def find(self, mass: np.ndarray) -> np.ndarray:
        """For each value m in [0, total), the leaf i with sum(leaves before i) <= m < sum(leaves up to i):
        walk down from the root, going right (less the left subtree's mass) whenever m is past the left sum."""
        mass = np.array(mass, dtype=np.float64)
        node = np.ones(mass.shape, dtype=np.int64)
        for _ in range(self.depth):
            node *= 2  # the left child
            left = self.nodes[node]
            right = mass >= left
            mass -= left * right
            node += right
        return node - self.leaves


class Priorities:
    """Proportional prioritization (Schaul et al. 2016) over the slots of a buffer.

    Slot i is sampled with probability P(i) = p_i / sum p, where p_i = (|TD error| + eps)^alpha
    from the last time it was trained on: surprising transitions are replayed more often. New
    transitions get the largest priority so far, so each is seen at least once; a slot with
    priority 0 is never sampled. Sampling this way biases the updates, which the importance
    weights w_i = (N P(i))^-beta / max_j w_j undo (fully at beta = 1); the caller anneals beta
    towards 1 over training.
    """

    def __init__(self, capacity: int, alpha: float, eps: float):
        self.tree = SumTree(capacity)
        self.alpha, self.eps = alpha, eps
        self.max_priority = 1.0

    def draw(self, rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
        """Slots in proportion to priority, stratified: each minibatch of B (the last axis of
        `shape`) takes one slot from each of B equal slices of the total priority mass."""
        batch = shape if isinstance(shape, int) else shape[-1]
        mass = (np.arange(batch) + rng.random(shape)) * (self.tree.total() / batch)
        return self.tree.find(mass)

    def weights(self, index: np.ndarray, beta: float, n: int) -> np.ndarray:
        """The importance weights of sampled slots out of n transitions, the largest of a minibatch 1."""
        weight = (n * (self.tree.get(index) / self.tree.total())) ** -beta
        return (weight / weight.max(axis=-1, keepdims=True)).astype(np.float32)

    def update(self, index: np.ndarray, td_error: np.ndarray) -> None:
        priority = (np.abs(td_error) + self.eps) ** self.alpha
        self.tree.set(index, priority)
        self.max_priority = max(self.max_priority, float(priority.max()))


class PrioritizedReplayBuffer(ReplayBuffer):
    """A ReplayBuffer sampled in proportion to priority (the Priorities above)."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], n_step: int = 1, gamma: float = 0.99,
                 alpha: float = 0.6, eps: float = 1e-5, obs_dtype=np.float32):
        super().__init__(capacity, obs_shape, n_step, gamma, obs_dtype)
        self.priorities = Priorities(capacity, alpha, eps)
        self.unwritten = []  # slots of new transitions whose priority is not in the tree yet

    def add(self, *transition) -> None:
        # Writing one priority into the tree is a numpy call per level, slow beside an env step;
        # so new transitions are written all at once when the tree is next read.
        self.unwritten.append(self.next)
        super().add(*transition)

    def write_new_priorities(self) -> None:
        """Give the transitions added since the last read the largest priority so far."""
        if self.unwritten:
            self.priorities.tree.set(self.unwritten, self.priorities.max_priority)
            self.unwritten = []

    def priority(self, index) -> np.ndarray:
        self.write_new_priorities()
        return self.priorities.tree.get(index)

    def sample(self, rng: np.random.Generator, shape: int | tuple[int, ...],
               beta: float = 1.0) -> Batch:
        """Sample in proportion to priority; adds each transition's importance `weight` and its
        `index` (for update_priorities)."""
        self.write_new_priorities()
        # Rounding can carry a value just past the last stored transition (into the empty leaves of a
        # buffer that is not full yet); those land on the last stored one instead.
        idx = np.minimum(self.priorities.draw(rng, shape), self.size - 1)
        return self.gather(idx, weight=self.priorities.weights(idx, beta, self.size), index=idx)

    def update_priorities(self, index: np.ndarray, td_error: np.ndarray) -> None:
        self.write_new_priorities()  # first, so that these TD errors overwrite them
        self.priorities.update(index, td_error)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**super().arrays(), "priority": self.priority(np.arange(self.size)),
                "max_priority": self.priorities.max_priority}

    def restore(self, data) -> None:
        super().restore(data)
        self.priorities.tree.set(np.arange(self.size), data["priority"])
        self.priorities.max_priority = float(data["max_priority"])
        self.unwritten = []
