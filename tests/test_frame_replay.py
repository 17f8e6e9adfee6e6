"""The frame-sharing Atari replay against a naive reference: every env's stacks built whole and
turned into n-step transitions by replay_buffer.NStep, on hand-built episodes."""

from collections import deque

import numpy as np
import pytest

from frame_replay import FrameReplayBuffer, PrioritizedFrameReplayBuffer
from replay_buffer import NStep

STACK = 4


def frame(uid: int) -> np.ndarray:
    """A tiny frame that names itself: two uint8 pixels holding a unique id."""
    return np.array(divmod(uid, 256), dtype=np.uint8)


def uid(f: np.ndarray) -> int:
    return int(f[0]) * 256 + int(f[1])


def play(buffer: FrameReplayBuffer, lengths: list[list[tuple[int, str]]], n: int, gamma: float, seed: int = 0,
         padding: str = "zeros", first_id: int = 1) -> dict[int, tuple]:
    """Feed the envs' episodes, step by step and env by env in turn, to `buffer`, and the same
    stacks to a naive NStep per env. `lengths[e]` lists env e's episodes as (steps, how it ends).
    Returns the naive transitions keyed by the id of their observation's newest frame."""
    rng = np.random.default_rng(seed)
    naive, next_id = {}, first_id
    streams = [iter([(i, length, end) for length, end in episodes for i in range(length)]) for episodes in lengths]
    stacks: list[deque | None] = [None] * len(lengths)
    nsteps = [NStep(n, gamma) for _ in lengths]
    active = set(range(len(lengths)))
    while active:
        for e in sorted(active):
            step = next(streams[e], None)
            if step is None:
                active.discard(e)
                continue
            i, length, end = step
            if i == 0:  # a new episode: the env's first stack, padded like the env pads it
                first = frame(next_id)
                next_id += 1
                pad = frame(0) if padding == "zeros" else first
                stacks[e] = deque([pad] * (STACK - 1) + [first], maxlen=STACK)
                buffer.start(e, np.array(stacks[e]))
            obs = np.array(stacks[e])
            stacks[e].append(frame(next_id))
            next_id += 1
            last = i == length - 1
            terminated, truncated = last and end == "terminated", last and end == "truncated"
            action, reward = int(rng.integers(6)), float(rng.integers(-1, 2))
            next_obs = np.array(stacks[e])
            buffer.add(e, action, reward, next_obs, terminated, truncated)
            for t in nsteps[e].push(obs, action, reward, next_obs, terminated, truncated):
                naive[uid(t[0][-1])] = t
    return naive


def assert_same(buffer: FrameReplayBuffer, slots: np.ndarray, naive: dict[int, tuple]) -> None:
    batch = buffer.transitions(slots)
    for i in range(len(slots)):
        obs, action, ret, next_obs, terminated, discount = naive[uid(batch.obs[i][-1])]
        np.testing.assert_array_equal(batch.obs[i], obs)
        assert batch.action[i] == action
        assert batch.reward[i] == pytest.approx(ret, abs=1e-5)
        np.testing.assert_array_equal(batch.next_obs[i], next_obs)
        assert batch.terminated[i] == float(terminated)
        assert batch.discount[i] == pytest.approx(discount)


EPISODES = [[(5, "terminated"), (2, "truncated"), (9, "terminated")],
            [(1, "terminated"), (7, "truncated"), (3, "terminated"), (4, "truncated")],
            [(12, "truncated")]]


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("padding", ["zeros", "first frame"])
def test_every_transition_matches_the_naive_stacks_across_episode_ends_and_envs(n, padding):
    buffer = FrameReplayBuffer(3 * 200, num_envs=3, frame_shape=(2,), n_step=n, gamma=0.9)
    naive = play(buffer, EPISODES, n, 0.9, padding=padding)
    slots = np.arange(3 * 200)
    ok = buffer.sampleable(slots)
    assert ok.sum() == len(naive) == sum(length for episodes in EPISODES for length, _ in episodes)
    assert_same(buffer, slots[ok], naive)


def test_the_last_steps_wait_until_their_n_step_return_is_complete():
    # The second episode is still running: its last n - 1 = 2 steps have no 3-step return yet.
    buffer = FrameReplayBuffer(100, num_envs=1, frame_shape=(2,), n_step=3, gamma=0.9)
    naive = play(buffer, [[(6, "terminated"), (10, "running")]], 3, 0.9)
    ok = buffer.sampleable(np.arange(100))
    assert ok.sum() == len(naive) == 6 + 10 - 2
    assert_same(buffer, np.arange(100)[ok], naive)


def test_wraparound_never_serves_an_overwritten_frame():
    buffer = FrameReplayBuffer(2 * 40, num_envs=2, frame_shape=(2,), n_step=3, gamma=0.99)
    episodes = [[(13, "terminated"), (20, "truncated"), (8, "terminated"), (30, "truncated")],
                [(50, "truncated"), (9, "terminated"), (6, "terminated")]]
    naive = play(buffer, episodes, 3, 0.99, seed=1)
    assert buffer.written.min() > buffer.per_env  # both rings wrapped
    slots = np.arange(2 * 40)
    ok = buffer.sampleable(slots)
    assert 0.6 * 80 < ok.sum() < 80  # most slots serve; pads, finals and the oldest 3 frames do not
    assert_same(buffer, slots[ok], naive)
    batch = buffer.sample(np.random.default_rng(0), (4, 16))
    assert batch.obs.shape == (4, 16, STACK, 2) and batch.obs.dtype == np.uint8
    assert buffer.sampleable(batch.index.ravel()).all()


def test_each_frame_is_stored_once():
    """A stack shares 3 of its 4 frames with the stack before it, and a transition's next observation 3
    with its observation: each frame the envs showed is in exactly one slot, beside its episode's padding."""
    buffer = FrameReplayBuffer(2 * 60, num_envs=2, frame_shape=(2,), n_step=3)
    episodes = [[(13, "terminated"), (20, "truncated")], [(9, "terminated"), (6, "terminated"), (8, "truncated")]]
    play(buffer, episodes, 3, 0.99)
    shown = 5 + sum(length for env in episodes for length, _ in env)  # each episode's first frame, one per step
    ids = [uid(f) for f, kind in zip(buffer.frame, buffer.kind, strict=True) if kind != 0]  # 0: a padding slot
    assert sorted(ids) == list(range(1, shown + 1))  # every frame once: none missing, none twice
    assert len(buffer) == shown + 5 * (STACK - 1)  # plus 3 padding slots per episode, nothing else
    assert buffer.nbytes < buffer.frame.size * 1.1 + 2 * 60 * 11  # frames, and 11 bytes of bookkeeping per slot


def test_an_episode_cut_short_by_a_resume_ends_there_as_if_truncated():
    # A resumed run starts new episodes in every env: the one left running becomes a truncated one.
    buffer = FrameReplayBuffer(100, num_envs=1, frame_shape=(2,), n_step=3, gamma=0.9)
    play(buffer, [[(6, "running"), (5, "terminated")]], 3, 0.9)
    naive = play(FrameReplayBuffer(100, num_envs=1, frame_shape=(2,), n_step=3, gamma=0.9),
                 [[(6, "truncated"), (5, "terminated")]], 3, 0.9)
    ok = buffer.sampleable(np.arange(100))
    assert ok.sum() == len(naive) == 11
    assert_same(buffer, np.arange(100)[ok], naive)


def test_a_restored_buffer_serves_the_same_transitions():
    buffer = FrameReplayBuffer(2 * 40, num_envs=2, frame_shape=(2,), n_step=3, gamma=0.99)
    naive = play(buffer, [[(30, "terminated"), (25, "running")], [(50, "truncated"), (9, "running")]], 3, 0.99)
    restored = FrameReplayBuffer(2 * 40, num_envs=2, frame_shape=(2,), n_step=3, gamma=0.99)
    restored.restore({name: array.copy() for name, array in buffer.arrays().items()})
    slots = np.arange(2 * 40)
    np.testing.assert_array_equal(restored.sampleable(slots), buffer.sampleable(slots))
    assert_same(restored, slots[buffer.sampleable(slots)], naive)
    with pytest.raises(ValueError, match="holds 80 frames of 2 envs"):
        FrameReplayBuffer(2 * 50, num_envs=2, frame_shape=(2,)).restore(buffer.arrays())


def test_prioritized_frames_hold_a_priority_exactly_while_a_slot_starts_a_complete_transition():
    """Through episode ends, two envs and wraparound: sampleable slots, and only those, have a
    priority: the one their transition had if it is still there, the largest so far if it is
    new (a slot overwritten since does not keep its old transition's priority)."""
    buffer = PrioritizedFrameReplayBuffer(2 * 40, num_envs=2, frame_shape=(2,), n_step=3, gamma=0.99)
    slots = np.arange(2 * 40)
    play(buffer, [[(13, "terminated"), (10, "running")], [(20, "truncated"), (4, "running")]], 3, 0.99)
    batch = buffer.sample(np.random.default_rng(0), (2, 8))
    buffer.update_priorities(batch.index, np.linspace(0.1, 3.0, 16).reshape(2, 8))
    held = np.flatnonzero(buffer.arrays()["priority"])
    known = dict(zip((uid(obs[-1]) for obs in buffer.transitions(held).obs), buffer.arrays()["priority"][held],
                     strict=True))
    learned = {uid(obs[-1]) for obs in batch.obs.reshape(16, STACK, 2)}
    play(buffer, [[(12, "terminated"), (9, "running")], [(30, "truncated")]], 3, 0.99, seed=1, first_id=1000)
    assert buffer.written.min() > buffer.per_env  # both rings wrapped
    priority, ok = buffer.arrays()["priority"], buffer.sampleable(slots)
    np.testing.assert_array_equal(priority > 0, ok)
    newest = [uid(obs[-1]) for obs in buffer.transitions(slots[ok]).obs]
    np.testing.assert_array_equal(priority[ok], [known.get(u, buffer.priorities.max_priority) for u in newest])
    assert 0 < len(learned & set(newest)) < len(learned)  # some learned transitions remain, some are gone


def test_prioritized_frames_sample_by_priority_and_restore_it():
    buffer = PrioritizedFrameReplayBuffer(2 * 40, num_envs=2, frame_shape=(2,), n_step=3, gamma=0.99)
    naive = play(buffer, [[(30, "terminated"), (25, "running")], [(50, "truncated"), (9, "running")]], 3, 0.99)
    held = np.flatnonzero(buffer.arrays()["priority"])
    favourite = held[5]
    buffer.update_priorities(held, np.where(held == favourite, 100.0, 0.01))
    batch = buffer.sample(np.random.default_rng(0), (50, 32), beta=1.0)
    assert 0.5 < np.mean(batch.index == favourite) < 1  # most of the mass, not all of it
    assert batch.weight[batch.index == favourite].max() < batch.weight[batch.index != favourite].min()
    assert_same(buffer, batch.index.ravel(), naive)
    restored = PrioritizedFrameReplayBuffer(2 * 40, num_envs=2, frame_shape=(2,), n_step=3, gamma=0.99)
    restored.restore({name: np.copy(array) for name, array in buffer.arrays().items()})
    np.testing.assert_array_equal(restored.arrays()["priority"], buffer.arrays()["priority"])
