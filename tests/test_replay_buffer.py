import numpy as np
import pytest

from replay_buffer import ReplayBuffer


def fill(buf: ReplayBuffer, n: int) -> None:
    for i in range(n):
        buf.add(np.full(2, i), i % 3, -float(i), np.full(2, i + 1), i % 5 == 0)


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
    assert batch["obs"].shape == (4, 32, 2) and batch["action"].shape == (4, 32)
    assert set(batch["obs"][..., 0].ravel()) <= set(range(10))  # never the 90 empty slots
    # the fields of one sample belong to the same transition
    np.testing.assert_array_equal(batch["next_obs"][..., 0], batch["obs"][..., 0] + 1)
    np.testing.assert_array_equal(batch["reward"], -batch["obs"][..., 0])


def test_sampling_is_uniform():
    buf = ReplayBuffer(10, (1,))
    fill_values = np.arange(10)
    for v in fill_values:
        buf.add([v], 0, 0.0, [v], False)
    counts = np.bincount(buf.sample(np.random.default_rng(1), 100_000)["obs"][:, 0].astype(int), minlength=10)
    assert counts.min() > 9_500 and counts.max() < 10_500


def test_save_and_load_round_trip(tmp_path):
    buf = ReplayBuffer(5, (2,))
    fill(buf, 7)
    buf.save(tmp_path / "replay.npz")
    other = ReplayBuffer(5, (2,))
    other.load(tmp_path / "replay.npz")
    assert (other.size, other.next) == (buf.size, buf.next)
    for name in ("obs", "action", "reward", "next_obs", "terminated"):
        np.testing.assert_array_equal(getattr(other, name), getattr(buf, name))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(6, (2,)).load(tmp_path / "replay.npz")
