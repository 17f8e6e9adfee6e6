import numpy as np
import pytest

from replay_buffer import NStep, PrioritizedReplayBuffer, ReplayBuffer, SumTree


def fill(buf: ReplayBuffer, n: int) -> None:
    for i in range(n):
        buf.add(np.full(2, i), i % 3, -float(i), np.full(2, i + 1), i % 5 == 0, 0.99)


def test_ring_buffer_wraps_around_and_keeps_the_newest():
    buf = ReplayBuffer(5, (2,))
    fill(buf, 7)  # transitions 0..6 into 5 slots: 5 and 6 overwrite 0 and 1
    assert len(buf) == 5 and buf.next == 2
    assert sorted(buf.obs[:, 0].tolist()) == [2, 3, 4, 5, 6]
    assert buf.obs[0, 0] == 5 and buf.next_obs[0, 0] == 6 and buf.reward[0] == -5 and buf.terminated[0] == 1
    assert buf.obs[1, 0] == 6 and buf.action[1] == 0


def test_sample_shape_and_only_valid_transitions():
    buf = ReplayBuffer(100, (2,))
    fill(buf, 10)
    batch = buf.sample(np.random.default_rng(0), (4, 32))
    assert batch.obs.shape == (4, 32, 2) and batch.action.shape == (4, 32)
    assert set(batch.obs[..., 0].ravel()) <= set(range(10))  # never the 90 empty slots
    # the fields of one sample belong to the same transition
    np.testing.assert_array_equal(batch.next_obs[..., 0], batch.obs[..., 0] + 1)
    np.testing.assert_array_equal(batch.reward, -batch.obs[..., 0])


def test_sampling_is_uniform_over_the_stored_transitions():
    buf = ReplayBuffer(20, (1,))
    for v in range(10):  # half full: the other 10 slots hold zeros that must never be drawn
        buf.add([v + 1], 0, 0.0, [v + 1], False, 0.99)
    counts = np.bincount(buf.sample(np.random.default_rng(1), 100_000).obs[:, 0].astype(int), minlength=21)
    assert counts[0] == 0 and not counts[11:].any()  # no empty slot
    assert counts[1:11].min() > 9_500 and counts[1:11].max() < 10_500


def save_and_load(buf, path):
    """The round trip of a checkpoint: arrays() to an .npz file, restore() from it."""
    np.savez(path, **buf.arrays())
    return np.load(path)


def test_save_and_load_round_trip(tmp_path):
    buf = ReplayBuffer(5, (2,))
    fill(buf, 7)
    other = ReplayBuffer(5, (2,))
    other.restore(save_and_load(buf, tmp_path / "replay.npz"))
    assert (other.size, other.next) == (buf.size, buf.next)
    for name in ("obs", "action", "reward", "next_obs", "terminated", "discount"):
        np.testing.assert_array_equal(getattr(other, name), getattr(buf, name))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(6, (2,)).restore(np.load(tmp_path / "replay.npz"))


def run_nstep(rewards, n, gamma, end):
    """Feed one episode of len(rewards) steps (obs t = [t]) ending in `end`; collect the emitted transitions."""
    nstep, out = NStep(n, gamma), []
    for t, r in enumerate(rewards):
        last = t == len(rewards) - 1
        out += nstep.push([t], t % 2, r, [t + 1], last and end == "terminated", last and end == "truncated")
    return out


def test_nstep_returns_in_the_middle_of_an_episode():
    out = run_nstep([1.0, 2.0, 3.0, 4.0, 5.0], n=3, gamma=0.5, end="truncated")
    s0 = out[0]
    assert s0[0] == [0] and s0[1] == 0 and s0[3] == [3] and s0[4] is False
    assert s0[2] == 1 + 0.5 * 2 + 0.25 * 3 and s0[5] == 0.5**3


def test_nstep_across_a_termination_does_not_bootstrap():
    out = run_nstep([1.0, 2.0, 3.0, 4.0], n=3, gamma=0.5, end="terminated")
    assert [o[0] for o in out] == [[0], [1], [2], [3]]  # every step emitted exactly once
    tail = out[1:]  # the ones flushed at the end all point at the terminal state
    assert all(o[3] == [4] and o[4] is True for o in tail)
    assert [o[2] for o in tail] == [2 + 0.5 * 3 + 0.25 * 4, 3 + 0.5 * 4, 4.0]
    assert [o[5] for o in tail] == [0.5**3, 0.5**2, 0.5]


def test_nstep_across_a_truncation_bootstraps_from_the_last_state_with_shorter_discounts():
    out = run_nstep([1.0, 2.0, 3.0, 4.0], n=3, gamma=0.5, end="truncated")
    tail = out[1:]
    assert all(o[3] == [4] and o[4] is False for o in tail)
    assert [o[2] for o in tail] == [2 + 0.5 * 3 + 0.25 * 4, 3 + 0.5 * 4, 4.0]
    assert [o[5] for o in tail] == [0.5**3, 0.5**2, 0.5]  # y = R + discount * max Q(s_4)


def test_one_step_is_the_plain_transition():
    out = run_nstep([1.0, 2.0, 3.0], n=1, gamma=0.9, end="truncated")
    assert [(o[0], o[2], o[3], o[5]) for o in out] == [([0], 1.0, [1], 0.9), ([1], 2.0, [2], 0.9), ([2], 3.0, [3], 0.9)]


def test_sum_tree_invariants_after_updates():
    tree, rng = SumTree(10), np.random.default_rng(0)  # 10 leaves pad to 16
    leaves = np.zeros(10)
    for _ in range(50):
        idx = rng.integers(10, size=4)  # with repeats: the last value of an index wins
        p = rng.random(4)
        tree.set(idx, p)
        for i, v in zip(idx, p, strict=True):
            leaves[i] = v
        for node in range(1, tree.leaves):  # every inner node is the sum of its two children
            assert tree.nodes[node] == pytest.approx(tree.nodes[2 * node] + tree.nodes[2 * node + 1])
        assert tree.total() == pytest.approx(leaves.sum())
        np.testing.assert_array_equal(tree.get(np.arange(10)), leaves)
    # find() is a search in the prefix sums of the leaves
    mass = rng.random(1000) * tree.total()
    np.testing.assert_array_equal(tree.find(mass), np.searchsorted(np.cumsum(leaves), mass, side="right"))


def test_sum_tree_find_by_hand():
    tree = SumTree(4)
    tree.set([0, 1, 2, 3], [1.0, 0.0, 3.0, 2.0])  # prefix sums 1, 1, 4, 6
    assert tree.find(np.array([0.0, 0.99, 1.0, 3.99, 4.0, 5.99])).tolist() == [0, 0, 2, 2, 3, 3]


def test_prioritized_sampling_follows_priorities_and_weights_undo_it():
    buf = PrioritizedReplayBuffer(4, (1,), alpha=0.5, eps=0.0)
    for v in range(4):
        buf.add([v], 0, 0.0, [v], False, 0.99)
    buf.update_priorities(np.arange(4), np.array([1.0, 4.0, 9.0, 16.0]))  # p = |td|^0.5 = 1, 2, 3, 4
    batch = buf.sample(np.random.default_rng(0), (5000, 20), beta=0.5)
    counts = np.bincount(batch.obs[..., 0].astype(int).ravel(), minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.2, 0.3, 0.4], atol=0.005)
    # w_i = (N P(i))^-beta / max w: P = 0.1..0.4, N = 4, beta = 0.5
    w = (4 * np.array([0.1, 0.2, 0.3, 0.4])) ** -0.5
    i = batch.index
    assert np.all(batch.obs[..., 0] == i)
    np.testing.assert_allclose(batch.weight, (w / w.max())[i], rtol=1e-5)  # every minibatch holds item 0


def test_new_transitions_get_the_largest_priority_so_far():
    buf = PrioritizedReplayBuffer(8, (1,), alpha=1.0, eps=0.0)
    buf.add([0], 0, 0.0, [0], False, 0.99)
    assert buf.priority(0) == 1.0  # the first one gets 1
    buf.update_priorities(np.array([0]), np.array([5.0]))
    buf.add([1], 0, 0.0, [1], False, 0.99)
    assert buf.priority(1) == 5.0 and buf.priorities.tree.total() == 10.0
    buf.update_priorities(np.array([0, 1]), np.array([0.5, 0.5]))
    buf.add([2], 0, 0.0, [2], False, 0.99)
    assert buf.priority(2) == 5.0  # the maximum ever seen, not the current one


def test_prioritized_save_and_load_keeps_priorities(tmp_path):
    buf = PrioritizedReplayBuffer(5, (2,))
    fill(buf, 7)
    buf.update_priorities(np.arange(5), np.arange(5.0))
    other = PrioritizedReplayBuffer(5, (2,))
    other.restore(save_and_load(buf, tmp_path / "replay.npz"))
    np.testing.assert_array_equal(other.priorities.tree.nodes, buf.priorities.tree.nodes)
    assert other.priorities.max_priority == buf.priorities.max_priority and other.next == buf.next


def test_store_forms_n_step_transitions_and_flushes_them_at_an_episodes_end():
    replay = ReplayBuffer(100, (1,), n_step=2, gamma=0.5)
    # 0 -> 1 -> 2 -> 3 (terminated): two complete 2-step transitions, then the last step's alone
    for t in range(3):
        replay.store(np.array([float(t)]), 1, 1.0 + t, np.array([t + 1.0]), terminated=t == 2, truncated=False)
    # then 10 -> 11 (truncated by a time limit): stored with terminated 0, so it still bootstraps
    replay.store(np.array([10.0]), 0, 5.0, np.array([11.0]), terminated=False, truncated=True)
    stored = [(float(replay.obs[i, 0]), int(replay.action[i]), float(replay.reward[i]), float(replay.next_obs[i, 0]),
               float(replay.terminated[i]), float(replay.discount[i])) for i in range(len(replay))]
    assert stored == [(0.0, 1, 1.0 + 0.5 * 2.0, 2.0, 0.0, 0.25),  # r0 + g r1, bootstrapping from s2 with g^2
                      (1.0, 1, 2.0 + 0.5 * 3.0, 3.0, 1.0, 0.25),  # completed by the terminating step
                      (2.0, 1, 3.0, 3.0, 1.0, 0.5),  # the episode's end flushes the pending step with k = 1
                      (10.0, 0, 5.0, 11.0, 0.0, 0.5)]
    assert not replay.n_step.pending  # nothing carries over into the next episode
