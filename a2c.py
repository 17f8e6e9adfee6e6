"""Synchronous advantage actor-critic (A2C), on Gymnasium's CartPole, with TensorFlow 2 / Keras 3.

Train:     python a2c.py                              (writes runs/<name>/; --env Acrobot-v1, LunarLander-v3)
Watch:     python a2c.py --model runs/<name>/final.keras --view
Evaluate:  python a2c.py --model runs/<name>/final.keras --eval
Resume:    python a2c.py --resume runs/<name>
Curves:    tensorboard --logdir runs

The synchronous form of Mnih et al.'s A3C (2016): --num-envs copies of the env step side by side
(Gymnasium's vector env), --n-steps steps each, then one gradient step on all of it. Instead of
waiting for the episode's end as REINFORCE does, each return stops after at most n steps and
lets the critic estimate the rest:

    R_t = r_t + gamma * r_t+1 + ... + gamma^(k-1) * r_t+k-1 + gamma^k * V(s_t+k),   A_t = R_t - V(s_t)

(k: the steps left in the rollout). Fewer rewards summed is less noise, at the price of the
critic's errors; the envs, each in a different state, decorrelate the batch as DQN's replay
does. The loss, the update and the run around them are in policy_gradient.py (shared with
reinforce.py); this file gathers the data.
"""

import argparse
import contextlib
import sys
from collections.abc import Iterator

from plumbing.settings import parse_args

if __name__ == "__main__":
    parse_args(None, "a2c")  # bad flags: their one-line error now, not after TensorFlow loads

import gymnasium as gym
import numpy as np

import policy_gradient
from plumbing.envs import make_env
from policy_gradient import Experience, RewardScale, TrainingState, discounted_returns


def rollouts(args: argparse.Namespace, state: TrainingState, seed: int) -> Iterator[Experience]:
    """--n-steps steps of --num-envs envs at a time, acted on with the actor's latest weights, each
    step with its n-step return. An env whose episode ends starts the next one in the same step
    (SAME_STEP autoreset): the state its episode ended in comes in info["final_obs"]."""
    envs = gym.vector.SyncVectorEnv([lambda: make_env(args.env)] * args.num_envs,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    actor, scale = state.actor, RewardScale(state.return_stats, args.gamma, args.num_envs)
    running = np.zeros(args.num_envs)  # each env's return so far in its current episode
    shape = (args.n_steps, args.num_envs)
    with contextlib.closing(envs):  # closed when the run stops asking for batches
        obs, _ = envs.reset(seed=seed)
        while True:
            observations = np.zeros((*shape, *obs.shape[1:]), np.float32)
            actions, rewards, next_values = np.zeros(shape, np.int32), np.zeros(shape), np.zeros(shape)
            terminated, truncated = np.zeros(shape, bool), np.zeros(shape, bool)
            finished = []
            for t in range(args.n_steps):
                actor.observe(obs)  # into the running statistics the network standardizes its inputs with
                observations[t], actions[t] = obs, actor.sample(obs, state.rng)
                obs, reward, terminated[t], truncated[t], info = envs.step(actions[t])
                ended, cut = terminated[t] | truncated[t], truncated[t]
                rewards[t] = scale(reward, ended)  # what the agent learns from; the logs show the env's own
                if cut.any():  # a time limit: bootstrap from V of the state the episode was cut in
                    next_values[t, cut] = actor.values(np.stack(info["final_obs"][cut]))
                running += reward
                finished += running[ended].tolist()
                running[ended] = 0.0
            # The rollout stops mid-episode: its last step bootstraps from V of each env's current state
            # (where a time limit ended the episode at that step, from its last state, set above).
            next_values[-1] = np.where(truncated[-1], next_values[-1], actor.values(obs))
            returns = discounted_returns(rewards, terminated, truncated, next_values, args.gamma)
            yield Experience(observations.reshape(-1, obs.shape[1]), actions.ravel(), returns.ravel(), finished)


def main(argv: list[str] | None = None) -> int:
    return policy_gradient.main(argv, "a2c", rollouts)


if __name__ == "__main__":
    sys.exit(main())
