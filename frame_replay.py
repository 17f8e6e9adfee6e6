"""Replay for Atari: each 84x84 frame stored once, stacks and n-step returns rebuilt when sampled.

A stack of 4 frames shares 3 of them with the stack before it, and a transition's next
observation shares 3 with its observation; storing stacks whole keeps every frame 8 times
(docs/atari.md has the sizes). Here each env of the vector env writes its own stream
of steps into its own part of the ring:

    slot:  pad pad pad  s0   s1   s2  ...  sT-1  final | pad pad pad  s0' ...
    frame: the newest frame of each observation (a new episode's first stack is written whole:
           3 padding slots, then its newest frame), action, reward and how the step ended

so the observation at any slot is the 4 frames ending there, and a transition (s_t, a_t,
n-step return, s_t+k) is read off the slots t..t+k. Only slots holding a step whose next k
slots are already written, and whose oldest frame has not been overwritten, are sampled.
"""

import numpy as np

from replay_buffer import Batch, Priorities

PAD, STEP, FINAL = 0, 1, 2  # what a slot holds: a stack's older frame, a step taken, an episode's last observation
ARRAYS = ["frame", "kind", "action", "reward", "terminated", "ended", "written"]


class FrameReplayBuffer:
    def __init__(self, capacity: int, num_envs: int, frame_shape: tuple[int, ...] = (84, 84), stack: int = 4,
                 n_step: int = 1, gamma: float = 0.99):
        if capacity < num_envs * (stack + n_step + 1):
            raise ValueError(f"replay capacity {capacity} is too small for {num_envs} envs")
        self.per_env = capacity // num_envs  # each env writes its own ring of this many slots
        self.num_envs, self.stack, self.n_step, self.gamma = num_envs, stack, n_step, gamma
        slots = self.per_env * num_envs
        self.frame = np.zeros((slots, *frame_shape), dtype=np.uint8)
        self.kind = np.full(slots, PAD, dtype=np.uint8)
        self.action = np.zeros(slots, dtype=np.int32)
        self.reward = np.zeros(slots, dtype=np.float32)
        self.terminated = np.zeros(slots, dtype=bool)
        self.ended = np.zeros(slots, dtype=bool)  # terminated or truncated after this step
        self.written = np.zeros(num_envs, dtype=np.int64)  # slots each env has written, ever

    def __len__(self) -> int:
        return int(np.minimum(self.written, self.per_env).sum())

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in ARRAYS)

    def _write(self, env: int, frame: np.ndarray, kind: int) -> int:
        slot = env * self.per_env + self.written[env] % self.per_env
        self.frame[slot], self.kind[slot], self.ended[slot] = frame, kind, False
        self.written[env] += 1
        return slot

    def start(self, env: int, obs: np.ndarray) -> None:
        """The first observation of an episode (a stack of frames, oldest first). An episode
        left unfinished before it (a resumed run) ends where it stopped, as if truncated."""
        if self.written[env]:
            latest = self._slot(env, self.written[env] - 1)
            if self.kind[latest] == STEP:
                self.kind[latest] = FINAL
                before = self._slot(env, self.written[env] - 2)  # the step that led to it, if any
                if self.written[env] > 1 and self.kind[before] == STEP:
                    self.ended[before] = True
        for frame in obs[:-1]:
            self._write(env, frame, PAD)
        self._write(env, obs[-1], STEP)

    def start_all(self, obs: np.ndarray) -> None:
        """The first observation of every env (a resumed run's envs start new episodes)."""
        for env, stack in enumerate(obs):
            self.start(env, stack)

    def store(self, actions, rewards, obs, terminated, truncated, info: dict) -> None:
        """One step of every env: each env's transition. An env whose episode ended led to
        info["final_obs"] (Gymnasium's vector envs' convention) and starts its next one from `obs`."""
        for env in range(self.num_envs):
            done = terminated[env] or truncated[env]
            self.add(env, actions[env], rewards[env], info["final_obs"][env] if done else obs[env], terminated[env],
                     truncated[env])
            if done:
                self.start(env, obs[env])

    def add(self, env: int, action: int, reward: float, next_obs: np.ndarray, terminated: bool,
            truncated: bool) -> None:
        """One step of `env` from its latest observation. After an episode's end, call start()
        with the next episode's first observation."""
        slot = env * self.per_env + (self.written[env] - 1) % self.per_env
        self.action[slot], self.reward[slot] = action, reward
        self.terminated[slot], self.ended[slot] = terminated, terminated or truncated
        self._write(env, next_obs[-1], FINAL if terminated or truncated else STEP)

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything stored, for a checkpoint (plumbing/dqn_run.py)."""
        return {name: getattr(self, name) for name in ARRAYS}

    def restore(self, data) -> None:
        """Put back what `arrays` returned into this (already allocated) buffer."""
        if data["frame"].shape != self.frame.shape or len(data["written"]) != self.num_envs:
            raise ValueError(f"the saved replay holds {data['frame'].shape[0]} frames of {len(data['written'])} envs, "
                             f"this run uses {self.frame.shape[0]} of {self.num_envs}")
        for name in ARRAYS:
            getattr(self, name)[...] = data[name]

    def sample(self, rng: np.random.Generator, shape: int | tuple[int, ...]) -> Batch:
        """Uniformly sample complete transitions (with replacement); `shape` may be (updates, batch)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        wanted, found = int(np.prod(shape)), []
        while sum(len(f) for f in found) < wanted:  # most slots are valid: a few rounds at most
            candidates = rng.integers(0, self.per_env * self.num_envs, size=2 * wanted)
            found.append(candidates[self.sampleable(candidates)])
        return self.transitions(np.concatenate(found)[:wanted].reshape(shape))

    def _logical(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For slots, their env and their position in that env's stream (counting every write)."""
        env, pos = np.divmod(slots, self.per_env)
        newest = self.written[env] - 1
        return env, newest - (newest - pos) % self.per_env

    def _slot(self, env: np.ndarray, logical: np.ndarray) -> np.ndarray:
        return env * self.per_env + logical % self.per_env

    def _reach(self, env: np.ndarray, t: np.ndarray) -> np.ndarray:
        """k: the steps a transition from t sums: n, or fewer when its episode ends first."""
        k = np.full(t.shape, self.n_step)
        for j in range(self.n_step - 1, -1, -1):  # the earliest end wins
            written = t + j < self.written[env]  # slots not written yet have not ended
            ended = self.ended[self._slot(env, np.minimum(t + j, self.written[env] - 1))] & written
            k = np.where(ended, j + 1, k)
        return k

    def sampleable(self, slots: np.ndarray) -> np.ndarray:
        """Which slots start a complete transition: a step, its stack's frames not yet
        overwritten, and the k slots after it written (up to its episode's end)."""
        env, t = self._logical(slots)
        oldest = self.written[env] - self.per_env  # the oldest logical position still in the ring
        ok = (t >= 0) & (t - (self.stack - 1) >= np.maximum(oldest, 0)) & (self.kind[slots] == STEP)
        return ok & (t + self._reach(env, t) <= self.written[env] - 1)

    def transitions(self, slots: np.ndarray) -> Batch:
        """The n-step transitions starting at `slots` (which must be sampleable)."""
        env, t = self._logical(slots)
        k = self._reach(env, t)
        ret, alive = np.zeros(t.shape, np.float32), np.ones(t.shape, bool)
        for j in range(self.n_step):  # the return sums rewards up to and including the episode's end
            at = self._slot(env, t + j)
            ret += np.where(alive, self.gamma**j * self.reward[at], 0.0).astype(np.float32)
            alive &= ~self.ended[at]
        last = self._slot(env, t + k - 1)
        return Batch(obs=self._stacks(env, t), action=self.action[slots], reward=ret,
                     next_obs=self._stacks(env, t + k), terminated=self.terminated[last].astype(np.float32),
                     discount=(self.gamma**k).astype(np.float32), index=slots)

    def _stacks(self, env: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The observation at logical positions t: the `stack` frames ending there, oldest first."""
        offsets = np.arange(-(self.stack - 1), 1)
        return self.frame[self._slot(env[..., None], t[..., None] + offsets)]


class PrioritizedFrameReplayBuffer(FrameReplayBuffer):
    """--prioritized over frames: a slot has a priority (Priorities) only while it starts a
    complete transition. Each write changes that for a few slots only: the slot written and the
    stacks its old frame belonged to lose theirs, and the steps n slots back may just have
    become complete; so the tree is brought up to date for those slots when it is next read."""

    def __init__(self, capacity: int, num_envs: int, frame_shape: tuple[int, ...] = (84, 84), stack: int = 4,
                 n_step: int = 1, gamma: float = 0.99, alpha: float = 0.6, eps: float = 1e-5):
        super().__init__(capacity, num_envs, frame_shape, stack, n_step, gamma)
        self.priorities = Priorities(self.per_env * num_envs, alpha, eps)
        self.writes = []  # (env, logical position) of the writes the tree has not seen yet

    def _write(self, env: int, frame: np.ndarray, kind: int) -> int:
        self.writes.append((env, self.written[env]))
        return super()._write(env, frame, kind)

    def _update_tree(self) -> None:
        if not self.writes:
            return
        env, t = np.array(self.writes).T
        self.writes = []
        tree = self.priorities.tree
        tree.set(self._slot(env, t), 0.0)  # what these slots held before is gone
        around = np.unique(self._slot(env[:, None], t[:, None] + np.arange(-self.n_step, self.stack)))
        old = tree.get(around)
        tree.set(around, np.where(self.sampleable(around), np.where(old > 0, old, self.priorities.max_priority), 0.0))

    def sample(self, rng: np.random.Generator, shape: int | tuple[int, ...], beta: float = 1.0) -> Batch:
        """Sample complete transitions in proportion to priority; adds each one's importance
        `weight` and its `index` (for update_priorities)."""
        self._update_tree()
        slots = self.priorities.draw(rng, shape)
        held = self.priorities.tree.get(slots) > 0
        if not held.all():  # rounding at the edge of a run of empty slots: very rare
            slots = np.where(held, slots, slots[held][0])
        weight = self.priorities.weights(slots, beta, len(self))
        return self.transitions(slots)._replace(weight=weight)

    def update_priorities(self, index: np.ndarray, td_error: np.ndarray) -> None:
        self._update_tree()
        self.priorities.update(index, td_error)

    def arrays(self) -> dict[str, np.ndarray]:
        self._update_tree()
        leaves = self.priorities.tree.get(np.arange(self.per_env * self.num_envs))
        return {**super().arrays(), "priority": leaves, "max_priority": self.priorities.max_priority}

    def restore(self, data) -> None:
        super().restore(data)
        self.priorities.tree.set(np.arange(self.per_env * self.num_envs), data["priority"])
        self.priorities.max_priority = float(data["max_priority"])
        self.writes = []
