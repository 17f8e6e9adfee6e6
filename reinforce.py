"""REINFORCE with a learned baseline, on Gymnasium's CartPole, with TensorFlow 2 / Keras 3.

Train:     python reinforce.py                              (writes runs/<name>/)
Watch:     python reinforce.py --model runs/<name>/final.keras --view
Evaluate:  python reinforce.py --model runs/<name>/final.keras --eval
Resume:    python reinforce.py --resume runs/<name>
Curves:    tensorboard --logdir runs

The oldest policy-gradient method (Williams 1992): play whole episodes with the current policy,
then make each action more probable in proportion to how much better the rest of its episode
went than the critic expected from its state:

    A_t = G_t - V(s_t),   G_t = r_t + gamma * r_t+1 + gamma^2 * r_t+2 + ...  (to the episode's end)

G_t is an unbiased sample of the action's value, but a noisy one: it sums every later reward's
luck. A time limit is not an end: a truncated episode's G_t bootstraps from V of the state it was
cut in. DQN learns from any old transition in its replay; REINFORCE only from episodes of the
policy it is improving, so each is used for one gradient step and dropped. The loss, the update
and the run around them are in policy_gradient.py (shared with a2c.py); this file gathers the data.
"""

import argparse
import sys
from collections.abc import Iterator

from plumbing.settings import parse_args

if __name__ == "__main__":
    parse_args(None, "reinforce")  # bad flags: their one-line error now, not after TensorFlow loads

import numpy as np

import policy_gradient
from plumbing.envs import make_env
from policy_gradient import Experience, RewardScale, TrainingState, discounted_returns


def episodes(args: argparse.Namespace, state: TrainingState, seed: int) -> Iterator[Experience]:
    """--episodes-per-update whole episodes at a time, played with the actor's latest weights,
    each step with its return-to-go."""
    actor, scale = state.actor, RewardScale(state.return_stats, args.gamma, num_envs=1)
    with make_env(args.env) as env:  # closed when the run stops asking for batches
        obs, _ = env.reset(seed=seed)
        while True:
            steps, finished, episode_return = [], [], 0.0  # (obs, action, reward, terminated, truncated, V(next))
            while len(finished) < args.episodes_per_update:
                actor.observe(obs[None])  # into the running statistics the network standardizes its inputs with
                action = int(actor.sample(obs[None], state.rng)[0])
                next_obs, reward, terminated, truncated, _ = env.step(action)
                # V of the state after the step is read only where a time limit cut the episode.
                next_value = float(actor.values(next_obs[None])[0]) if truncated and not terminated else 0.0
                learned = float(scale(np.array([reward]), np.array([terminated or truncated]))[0])
                steps.append((obs, action, learned, terminated, truncated, next_value))
                obs, episode_return = next_obs, episode_return + float(reward)
                if terminated or truncated:
                    finished.append(episode_return)
                    (obs, _), episode_return = env.reset(), 0.0
            columns = (np.array(column) for column in zip(*steps, strict=True))
            observations, actions, rewards, terminated, truncated, next_values = columns
            returns = discounted_returns(rewards[:, None], terminated[:, None], truncated[:, None],
                                         next_values[:, None], args.gamma)[:, 0]
            yield Experience(observations, actions, returns, finished)


def main(argv: list[str] | None = None) -> int:
    return policy_gradient.main(argv, "reinforce", episodes)


if __name__ == "__main__":
    sys.exit(main())
