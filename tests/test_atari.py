"""Atari from pixels: the evaluation env's preprocessing, and its stacks against ale_py's vector env."""

import numpy as np

from envs import make_env


def test_the_evaluation_env_gives_stacks_of_84x84_grey_uint8_frames_zero_padded():
    env = make_env("ALE/Pong-v5")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8 and env.action_space.n == 6
    assert not obs[:3].any() and obs[3].any()  # zeros before the first frame
    frames = [obs[3]]
    for _ in range(3):
        obs, *_ = env.step(0)
        frames.append(obs[3])
    np.testing.assert_array_equal(obs, np.array(frames))  # a sliding window, oldest first
    unwrapped = env.unwrapped
    assert unwrapped.spec.kwargs["repeat_action_probability"] == 0.25  # v5's sticky actions
    assert unwrapped.spec.kwargs["max_num_frames_per_episode"] == 108_000
    env.close()
