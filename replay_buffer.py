"""Experience replay: a fixed-size ring buffer of transitions on preallocated numpy arrays.

DQN learns from random minibatches of past transitions instead of the latest one, which
breaks the correlation between consecutive steps (Mnih et al. 2015). Storing each field in
its own preallocated array keeps `add` O(1) and lets `sample` gather a whole batch with one
fancy-indexing operation per field, with no Python loop over samples.
"""

from collections import deque
from pathlib import Path

import numpy as np

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "discount")


class ReplayBuffer:
    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype=np.float32):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
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

    def sample(self, rng: np.random.Generator, shape: int | tuple[int, ...]) -> dict[str, np.ndarray]:
        """Uniformly sample transitions (with replacement); `shape` may be (updates, batch)."""
        idx = rng.integers(0, self.size, size=shape)
        return {name: getattr(self, name)[idx] for name in FIELDS}

    def save(self, path: str | Path) -> None:
        """Write the contents and the write position to one .npz file (used by --resume)."""
        n = self.size
        np.savez(path, next=self.next, capacity=self.capacity,
                 **{name: getattr(self, name)[:n] for name in FIELDS})

    def load(self, path: str | Path) -> None:
        """Restore what `save` wrote into this (already allocated) buffer."""
        with np.load(path) as data:
            if int(data["capacity"]) != self.capacity:
                raise ValueError(f"saved replay has capacity {int(data['capacity'])}, "
                                 f"this run uses {self.capacity}")
            n = len(data["action"])
            for name in FIELDS:
                getattr(self, name)[:n] = data[name]
            self.size, self.next = n, int(data["next"])


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
