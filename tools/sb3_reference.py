"""The reference that a2c.py is measured against: Stable-Baselines3's A2C with the RL Zoo's
hyperparameters (rl-baselines3-zoo, hyperparams/a2c.yml), evaluated as bench.py evaluates ours.

Not part of the project and not in its requirements: it needs PyTorch. Run it in a venv of its own:

    python -m venv /tmp/sb3 && /tmp/sb3/bin/pip install stable-baselines3 "gymnasium[box2d]" torch
    /tmp/sb3/bin/python tools/sb3_reference.py Acrobot-v1 0      # env, seed [, steps]

It prints one JSON line: the greedy mean and std over 100 episodes at the end (start states from
seed + 10,000, as ours), a 20-episode greedy evaluation every 50,000 steps, and the training seconds.
"""

import json
import sys
import time

import torch
from stable_baselines3 import A2C
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

# The zoo's settings per env; everything else is SB3's A2C default (RMSprop 7e-4, 5 steps, tanh).
ZOO = {
    "CartPole-v1": dict(n_envs=8, steps=500_000, normalize=False, kwargs=dict(ent_coef=0.0)),
    "Acrobot-v1": dict(n_envs=16, steps=500_000, normalize=True, kwargs=dict(ent_coef=0.0)),
    "LunarLander-v3": dict(n_envs=8, steps=200_000, normalize=False,  # the zoo's LunarLander-v2 entry
                           kwargs=dict(gamma=0.995, n_steps=5, learning_rate=lambda left: 0.00083 * left,
                                       ent_coef=0.00001)),
}
EVAL_EVERY = 50_000


def evaluate(model: A2C, train_env, env_id: str, seed: int, episodes: int) -> tuple[float, float]:
    """Greedy (deterministic) returns, with the training's observation statistics if it normalises."""
    env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    if isinstance(train_env, VecNormalize):
        env = VecNormalize(env, training=False, norm_reward=False)
        env.obs_rms = train_env.obs_rms
    mean, std = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True)
    return float(mean), float(std)


def main() -> None:
    env_id, seed = sys.argv[1], int(sys.argv[2])
    zoo = ZOO[env_id]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else zoo["steps"]
    torch.set_num_threads(1)
    env = make_vec_env(env_id, n_envs=zoo["n_envs"], seed=seed)
    if zoo["normalize"]:
        env = VecNormalize(env, gamma=0.99)
    model = A2C("MlpPolicy", env, seed=seed, device="cpu", **zoo["kwargs"])
    evals, done, started = [], 0, time.time()
    while done < steps:
        chunk = min(EVAL_EVERY, steps - done)
        model.learn(chunk, reset_num_timesteps=False)
        done += chunk
        evals.append((done, evaluate(model, env, env_id, seed, 20)[0]))
    seconds = time.time() - started
    mean, std = evaluate(model, env, env_id, seed, 100)
    print(json.dumps(dict(env=env_id, seed=seed, steps=steps, final_mean=mean, final_std=std, evals=evals,
                          seconds=round(seconds, 1))))


if __name__ == "__main__":
    main()
