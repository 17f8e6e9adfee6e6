"""DQN's hyperparameters: each flag's default with a few words of why (`python run.py --help` lists
them), the tuned presets per env, and --plain. The defaults are MountainCar-v0's. No TensorFlow here,
so that a typo on a command line, see.py and bench.py never wait for it to load; the flags every
training script shares (--env, --steps, --seed, evaluation, playing) are in plumbing/settings.py.
"""

import argparse

from plumbing.system import usable_cores


def add_network_flags(net) -> None:
    net.add_argument("--units", type=int, default=128, help="width of each of the two hidden ReLU layers")
    net.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (at the start)")
    net.add_argument("--lr-end", type=float, default=2e-4,
                     help="anneal the learning rate linearly to this by the last step (= --lr: constant)")
    net.add_argument("--clip-norm", type=float, default=10.0, help="clip the global gradient norm to this")
    net.add_argument("--loss", choices=["mse", "huber"], default="mse",
                     help="squared error, or Huber (squared near 0, linear beyond 1: DQN's 'error clipping')")
    net.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                     help="what the hidden layers compute in (Atari: the convolutions); the weights, Q-values, loss "
                          "and optimizer stay float32. auto: float32 (bfloat16 made Atari's update 1.14x faster on an "
                          "AVX512_BF16 CPU; 3 Pong seeds ended at a mean of 17.8 against 18.2; dense nets: slower). "
                          "bfloat16 is native only with AMX or AVX512_BF16 and oneDNN on; a conv net needs AVX-512. "
                          "--resume keeps the run's own unless told")


def add_dqn_flags(dqn) -> None:
    dqn.add_argument("--plain", action="store_true",
                     help="every variant below off, whatever the defaults: 1-step returns, no Double, no "
                          "prioritized replay, no dueling, hard target copies, squared error (the rest stays: Adam "
                          "with a decaying rate, gradient clipping, observations scaled to [-1, 1])")
    dqn.add_argument("--gamma", type=float, default=0.99, help="discount factor")
    dqn.add_argument("--buffer-size", type=int, default=50_000, help="replay capacity in transitions")
    dqn.add_argument("--batch-size", type=int, default=64, help="transitions per gradient step")
    dqn.add_argument("--learning-starts", type=int, default=1_000,
                     help="env steps of pure exploration before the first update")
    dqn.add_argument("--train-freq", type=int, default=16,
                     help="env steps between training calls (all envs' steps counted); "
                          "--train-freq / --gradient-steps is the update ratio, "
                          "env steps per gradient step")
    dqn.add_argument("--gradient-steps", type=int, default=16,
                     help="gradient steps per training call (one compiled call does all of them)")
    dqn.add_argument("--target-update", type=int, default=100,
                     help="env steps between hard copies of the online weights into the target network")
    dqn.add_argument("--tau", type=float, default=None,
                     help="instead of hard copies, move the target toward the online weights by this fraction "
                          "after every gradient step (Polyak averaging, Lillicrap et al. 2016; e.g. 0.005)")
    dqn.add_argument("--n-step", type=int, default=3,
                     help="learn from n-step returns r_t + g r_t+1 + ... + g^n max Q(s_t+n): rewards travel "
                          "back n steps per update instead of one (Sutton 1988; part of Rainbow); "
                          "1 is the textbook one-step target")
    dqn.add_argument("--double", action=argparse.BooleanOptionalAction, default=False,
                     help="Double DQN (van Hasselt et al. 2016): the online network picks the next action, "
                          "the target network evaluates it, which curbs the overestimation of max")
    dqn.add_argument("--prioritized", action=argparse.BooleanOptionalAction, default=False,
                     help="prioritized replay (Schaul et al. 2016): sample transitions in proportion to "
                          "(|TD error| + eps)^alpha, and correct the bias with importance weights")
    dqn.add_argument("--per-alpha", type=float, default=0.6,
                     help="--prioritized: how much priorities count (0: uniform sampling)")
    dqn.add_argument("--per-beta", type=float, default=0.4,
                     help="--prioritized: importance-weight exponent at the start, annealed to 1 by the last step")
    dqn.add_argument("--per-eps", type=float, default=1e-5,
                     help="--prioritized: added to |TD error| so that no transition's priority is 0")
    dqn.add_argument("--dueling", choices=["none", "avg", "max"], default="none",
                     help="Dueling network (Wang et al. 2016): separate value and advantage heads, "
                          "Q = V + A - mean(A) (avg) or - max(A) (max)")
    dqn.add_argument("--clip-rewards", action=argparse.BooleanOptionalAction, default=False,
                     help="learn from the sign of each reward (-1, 0, +1), as DQN does on Atari so that one "
                          "learning rate suits every game; returns are logged and evaluated unclipped")
    add_exploration_flags(dqn)


def add_exploration_flags(group) -> None:
    """epsilon-greedy: random actions at a rate that falls from start to end."""
    group.add_argument("--epsilon-start", type=float, default=1.0, help="initial exploration rate")
    group.add_argument("--epsilon-end", type=float, default=0.02, help="final exploration rate")
    group.add_argument("--epsilon-steps", type=int, default=20_000,
                       help="env steps to anneal epsilon linearly from start to end (start = end: constant)")
    group.add_argument("--epsilon-schedule", choices=["linear", "exponential"], default="linear",
                       help="linear over --epsilon-steps, or multiplied by --epsilon-decay every env step")
    group.add_argument("--epsilon-decay", type=float, default=0.9998,
                       help="per-step factor of the exponential schedule (0.9998: from 1 to 0.02 in ~20k steps)")


# Tuned settings per env, on top of the defaults above (which are MountainCar-v0's); a flag
# given on the command line still wins. Chosen with bench.py over seeds 0-9 (docs/results.md).
PRESETS = {
    "MountainCar-v0": {},
    "CartPole-v1": dict(steps=30_000),
    # Double DQN alone hurt Acrobot; beside prioritized replay it made the steadiest runs.
    "Acrobot-v1": dict(steps=60_000, double=True, prioritized=True),
    # Episodes last up to 1,000 steps: evaluate less often, with fewer episodes.
    "LunarLander-v3": dict(steps=200_000, eval_every=10_000, eval_episodes=20),
}

# Every ALE game ("ALE/<Game>-v5") trains with these. They set every DQN setting, so that a
# change of the classic-control defaults above never changes an Atari run. The recipe follows
# the fast Pong ones (Tianshou's example: 3-step returns, a 100k replay, few updates per env
# step, a target copy every 500 updates, lr 1e-4): the gradient step, not the env, is the cost.
ATARI = dict(
    steps=2_000_000, num_envs=8,
    threads=usable_cores(),  # TensorFlow's and the games' threads: the conv net's update uses every core
    lr=1e-4, lr_end=1e-4, clip_norm=10.0, loss="huber",
    gamma=0.99, n_step=3, double=False, prioritized=False, dueling="none", tau=None, clip_rewards=True,
    buffer_size=100_000, batch_size=32, learning_starts=20_000,
    train_freq=64, gradient_steps=8,  # one gradient step per 8 env steps, 8 per compiled call
    target_update=4_000,  # env steps: every 500 gradient steps
    epsilon_start=1.0, epsilon_end=0.01, epsilon_steps=250_000, epsilon_schedule="linear",
    eval_every=100_000, eval_episodes=5, final_eval_episodes=20, keep_best=True,
    snapshot_every=100_000, log_every=10_000,
)
PRESETS.update({"ALE/Pong-v5": ATARI, "ALE/Breakout-v5": ATARI})


# --plain: every variant off, in place of the defaults and the env's preset (a flag given on the
# command line still wins): DQN as Mnih et al. 2015 describe its target and replay, with a squared error.
PLAIN = dict(n_step=1, double=False, prioritized=False, dueling="none", tau=None, loss="mse")
