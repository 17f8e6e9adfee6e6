"""The training scripts' settings: the flags they share, the tabular and policy-gradient flags with
their presets (DQN's are in hyperparameters.py), and the checks that turn bad values into one-line
errors. No TensorFlow here, so that see.py and bench.py (and a typo on a command line) never wait
for it to load.

Each algorithm is a script (ALGORITHMS); they share the run, evaluation and playing flags and each
adds its own group.
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

from hyperparameters import ATARI, PLAIN, PRESETS, add_dqn_flags, add_network_flags


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as for every bad input
        fail(f"{message} (see python {self.prog} --help)")


def fail(message: str) -> None:
    """Bad input: one line on stderr saying what is wrong and what to do, exit code 2."""
    one_line = " ".join(message.split())  # an exception's text quoted in `message` may span lines
    print(f"{Path(sys.argv[0]).name}: error: {one_line}", file=sys.stderr)
    sys.exit(2)


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def preset(env_id: str, algo: str = "dqn") -> dict:
    """An algorithm's tuned settings for an env: its own, for DQN the Atari ones for any ALE game, else none."""
    if algo != "dqn":
        return ALGORITHMS[algo].presets.get(env_id, {})
    return PRESETS.get(env_id, ATARI if is_atari(env_id) else {})


# Tabular Q-learning: the defaults below are MountainCar-v0's.
TABULAR_PRESETS = {"MountainCar-v0": {}, "Acrobot-v1": dict(bins=10)}

# The policy-gradient agents: the defaults below are CartPole-v1's.
REINFORCE_PRESETS = {"CartPole-v1": {}}
A2C_PRESETS = {
    "CartPole-v1": {},
    "Acrobot-v1": dict(steps=500_000),  # the RL Zoo's budget, to compare with it
    # Episodes last up to 1,000 steps: evaluate less often.
    "LunarLander-v3": dict(steps=1_000_000, eval_every=25_000, snapshot_every=50_000, log_every=10_000),
}

# What runs did before these flags existed, where it is not the flag's default: --resume of such
# a run goes on as it started.
BEFORE_THE_FLAG = dict(activation="relu", normalize_observations=False, scale_rewards=False, precision="float32")


class Algorithm(NamedTuple):
    script: str
    description: str
    default_env: str
    presets: dict  # tuned settings per env id


# The training scripts, by the name bench.py's --algo gives them.
ALGORITHMS = {
    "dqn": Algorithm("run.py", "Deep Q-learning on a Gymnasium env (default MountainCar-v0).", "MountainCar-v0",
                     PRESETS),
    "tabular": Algorithm("tabular.py", "Tabular Q-learning on a discretized Gymnasium env (default MountainCar-v0), "
                         "numpy only.", "MountainCar-v0", TABULAR_PRESETS),
    "reinforce": Algorithm("reinforce.py", "REINFORCE with a learned baseline on a Gymnasium env (default "
                           "CartPole-v1).", "CartPole-v1", REINFORCE_PRESETS),
    "a2c": Algorithm("a2c.py", "Synchronous advantage actor-critic (A2C) on a Gymnasium env (default CartPole-v1).",
                     "CartPole-v1", A2C_PRESETS),
}
POLICY_GRADIENTS = ("reinforce", "a2c")


def make_parser(algo: str = "dqn") -> Parser:
    """An algorithm's command line: one function per group of flags, in the order --help shows them."""
    p = Parser(prog=ALGORITHMS[algo].script, description=ALGORITHMS[algo].description,
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_flags(p.add_argument_group("run"), algo)
    if algo == "dqn":
        add_network_flags(p.add_argument_group("Q-network and optimiser"))
        add_dqn_flags(p.add_argument_group("DQN"))
    elif algo == "tabular":
        add_tabular_flags(p.add_argument_group("tabular Q-learning"))
    else:
        add_policy_gradient_flags(p.add_argument_group("policy network and optimiser"), algo)
    add_evaluation_flags(p.add_argument_group("evaluation, logging and snapshots"))
    play = p.add_argument_group("playing a saved model")
    add_play_flags(play, ".npy table" if algo == "tabular" else ".keras or .h5 snapshot")
    if algo == "dqn":
        play.add_argument("--plot", metavar="FILE", default=None,
                          help="draw max_a Q and the greedy action over a 2-number observation (MountainCar) as a PNG")
        play.add_argument("--export", metavar="DIR", default=None,
                          help="write the Q-network to the new folder DIR as a TensorFlow SavedModel, ONNX and "
                               "LiteRT (obs -> Q-values), to serve without this code (see.py --policy plays the ONNX), "
                               "and as Keras HDF5 (model.h5, which --model plays)")
    if algo == "tabular":  # many times faster per step than DQN: fewer files, the same number of points
        p.set_defaults(steps=1_500_000, eval_every=50_000, snapshot_every=100_000, log_every=20_000)
    elif algo in POLICY_GRADIENTS:  # CartPole's evaluation episodes last up to 500 steps: fewer of them
        p.set_defaults(steps=300_000 if algo == "reinforce" else 200_000, eval_every=10_000, eval_episodes=20,
                       snapshot_every=20_000, log_every=5_000)
    return p


def add_run_flags(run, algo: str) -> None:
    default_env, presets = ALGORITHMS[algo].default_env, ALGORITHMS[algo].presets
    envs = ("Gymnasium env id with a bounded Box observation (it is cut into bins) and Discrete actions"
            if algo == "tabular" else "Gymnasium env id with a Box observation and Discrete actions")
    atari = ", or an Atari game ALE/<Game>-v5 (learned from pixels)" if algo == "dqn" else ""
    run.add_argument("--env", default=default_env,
                     help=f"{envs}{atari}; {', '.join(presets)} bring their own tuned defaults "
                          f"(see them with --env ID --help)")
    run.add_argument("--steps", type=int, default=60_000, help="environment steps to train for")
    run.add_argument("--seed", type=int, default=0, help="seeds the env, the network and the replay sampling")
    run.add_argument("--name", default=None, help="run name (default: a timestamp); output goes to LOGDIR/NAME")
    run.add_argument("--logdir", default="runs", help="root folder for runs")
    run.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help="continue a stopped run (Ctrl-C, kill, crash) from its last complete checkpoint, "
                          "with its saved settings")
    if algo == "dqn":
        run.add_argument("--threads", type=int, default=1,
                         help="TensorFlow threads (and the Atari games' stepping threads); a dense network is "
                              "tiny, so more threads mostly add overhead, a conv net uses them (Atari's default: "
                              "every core this process may use)")
        run.add_argument("--num-envs", type=int, default=1,
                         help="Atari: games stepped at once, acted on in one forward pass (classic envs use one)")


def add_tabular_flags(tab) -> None:
    tab.add_argument("--bins", type=int, default=20,
                     help="cells per observation dimension: more cells tell states apart better, but each is "
                          "visited less often")
    tab.add_argument("--tilings", type=int, default=1,
                     help="grids, each shifted by a fraction of a cell, whose cells' entries sum to Q (tile "
                          "coding): nearby states share what they learn; 1 is the plain table")
    tab.add_argument("--lr", type=float, default=0.5, help="step size of each table update (at the start)")
    tab.add_argument("--lr-end", type=float, default=0.05,
                     help="anneal the step size linearly to this by the last step (= --lr: constant)")
    tab.add_argument("--gamma", type=float, default=1.0,
                     help="discount factor; at 1 MountainCar's values are minus the steps left to the flag")
    tab.add_argument("--q-init", type=float, default=0.0,
                     help="every table entry's starting value; above the true values (0 for MountainCar's "
                          "-1 per step) it is optimistic: untried actions look best, so the agent tries them")
    # a little exploration throughout revisits the cells whose values the optimistic start leaves wrong
    add_epsilon_flags(tab, start=0.05, end=0.05, steps=1_000_000)


def add_policy_gradient_flags(pg, algo: str) -> None:
    pg.add_argument("--units", type=int, default=64, help="width of each of the two hidden layers")
    # tanh units and both normalisations: what both needed to learn Acrobot (docs/results.md has the runs)
    pg.add_argument("--activation", choices=["relu", "tanh"], default="tanh", help="the hidden layers' nonlinearity")
    pg.add_argument("--normalize-observations", action=argparse.BooleanOptionalAction, default=True,
                    help="standardize observations with the running mean and std of training's (clipped to "
                         "+-10); the network keeps them, so its snapshots play as trained")
    pg.add_argument("--scale-rewards", action=argparse.BooleanOptionalAction, default=True,
                    help="divide rewards by the running std of the discounted return (clipped to +-10): "
                         "the critic's targets stay near unit size")
    pg.add_argument("--shared", action=argparse.BooleanOptionalAction, default=False,
                    help="one torso for the policy and value heads; otherwise the critic has its own layers")
    pg.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (at the start)")
    # A2C's last weights were often worse than its best ones at a constant rate; annealing to 0 steadies the end
    pg.add_argument("--lr-end", type=float, default=1e-3 if algo == "reinforce" else 0.0,
                    help="anneal the learning rate linearly to this by the last step (= --lr: constant)")
    pg.add_argument("--clip-norm", type=float, default=0.5, help="clip the global gradient norm to this")
    pg.add_argument("--gamma", type=float, default=0.99, help="discount factor")
    pg.add_argument("--value-coef", type=float, default=0.5, help="weight of the critic's squared error in the loss")
    pg.add_argument("--entropy-coef", type=float, default=0.0 if algo == "reinforce" else 0.01,
                    help="weight of the policy's entropy bonus: keeps it from becoming certain too early")
    pg.add_argument("--normalize-advantages", action=argparse.BooleanOptionalAction, default=algo == "reinforce",
                    help="scale each batch's advantages to mean 0 and std 1: one step size suits episodes of "
                         "any length and reward scale")
    if algo == "reinforce":
        pg.add_argument("--episodes-per-update", type=int, default=1,
                        help="whole episodes gathered before each gradient step")
        return
    pg.add_argument("--num-envs", type=int, default=8,
                    help="envs stepped side by side (Gymnasium's vector env); each batch holds n-steps x num-envs "
                         "transitions from as many different states")
    pg.add_argument("--n-steps", type=int, default=16,
                    help="steps per env before each update; returns bootstrap from V after them")


def add_epsilon_flags(group, start: float, end: float, steps: int) -> None:
    group.add_argument("--epsilon-start", type=float, default=start, help="initial exploration rate")
    group.add_argument("--epsilon-end", type=float, default=end, help="final exploration rate")
    group.add_argument("--epsilon-steps", type=int, default=steps,
                       help="env steps to anneal epsilon linearly from start to end (start = end: constant)")


def add_evaluation_flags(ev) -> None:
    ev.add_argument("--eval-every", type=int, default=5_000, help="env steps between evaluations (0: never)")
    ev.add_argument("--eval-episodes", type=int, default=50,
                    help="greedy episodes per periodic evaluation (--keep-best picks by it: fewer is noisier)")
    ev.add_argument("--final-eval-episodes", type=int, default=100,
                    help="greedy episodes of the final evaluation (100 is the customary 'solved' test)")
    ev.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=True,
                    help="final.keras gets the weights that scored best in the periodic evaluations (the last "
                         "weights go to last.keras): DQN's greedy policy keeps changing while it trains")
    ev.add_argument("--snapshot-every", type=int, default=10_000,
                    help="env steps between snapshots: a step_N.keras file and the checkpoint --resume starts from")
    ev.add_argument("--log-every", type=int, default=2_000, help="env steps between log lines")


def add_play_flags(play, snapshot: str) -> None:
    play.add_argument("--model", default=None,
                      help=f"a {snapshot} to play instead of training; in a run folder, with that run's env and "
                           "settings, and from its final evaluation's seed (a flag given still wins)")
    play.add_argument("--view", action="store_true", help="show the episodes in a window")
    play.add_argument("--eval", action="store_true", help="greedy evaluation; prints mean ± std and 'solved'")
    play.add_argument("--video", metavar="DIR", default=None, help="write an mp4 of every episode to DIR")
    play.add_argument("--gif", metavar="FILE", default=None, help="write the first episode as an animated GIF")
    play.add_argument("--gif-steps", type=int, metavar="N", default=None,
                      help="only the first N steps of it in the GIF (default: the whole episode)")
    play.add_argument("--episodes", type=int, default=None,
                      help="episodes to play (default: --final-eval-episodes with --eval, else 3)")


def final_eval_seed(seed: int) -> int:
    """The seed of a run's final evaluation: start states that no periodic evaluation used."""
    return seed + 10_000


# Settings of a run that say nothing about its network or env: --model takes the others from the run.
NOT_FROM_THE_RUN = {"seed", "threads", "name", "logdir", "resume", "model", "view", "eval", "video", "gif",
                    "gif_steps", "episodes", "plot", "export"}


def run_settings(model: str, parser: Parser) -> dict:
    """The settings of the run a --model file belongs to (args.json beside it), as defaults: its env and
    network, and its final evaluation's seed, so that --eval plays the start states the training's last
    line was measured on. Empty for a file outside a run folder."""
    try:
        saved = json.loads((Path(model).parent / "args.json").read_text())
        env = saved["env"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    known = vars(parser.parse_args([]))
    taken = {k: v for k, v in saved.items() if k in known and k not in NOT_FROM_THE_RUN}
    return {**taken, "env": env, "seed": final_eval_seed(int(saved.get("seed", 0)))}


def parse_args(argv: list[str] | None = None, algo: str = "dqn") -> argparse.Namespace:
    p = make_parser(algo)
    # First find the env, --plain and --model alone (without acting on --help), to put the env's preset,
    # the plain settings and a played run's own settings in place of the defaults.
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--env", default=None)
    first.add_argument("--plain", action="store_true")
    first.add_argument("--model", default=None)
    found = first.parse_known_args(argv)[0]
    trained = run_settings(found.model, p) if found.model else {}
    env = found.env or trained.get("env") or p.get_default("env")
    p.set_defaults(**{**preset(env, algo), **(PLAIN if found.plain and algo == "dqn" else {}), **trained})
    args = p.parse_args(argv)
    check_args(args)
    if algo == "dqn" and not args.resume and args.precision == "auto":  # args.json records the choice
        # float32 everywhere: bfloat16 made Atari's update a little faster, learning unproven (docs/atari.md)
        args.precision = "float32"
    if args.model and args.eval and args.episodes is None:  # as many as a training's final evaluation plays
        args.episodes = args.final_eval_episodes or None
    return args


def learns_from_pixels(args: argparse.Namespace) -> bool:
    """Whether this command trains or plays an Atari game (for --resume: the run's saved env)."""
    env = args.env
    if args.resume:
        try:
            env = json.loads((Path(args.resume) / "args.json").read_text())["env"]
        except (OSError, ValueError, KeyError, TypeError):  # bookkeeping.prepare_run says what is wrong with it
            return False
    return is_atari(env)


def check_args(a: argparse.Namespace) -> None:
    """Reject nonsense values before anything is created or written."""
    positive = ["steps", "units", "buffer_size", "batch_size", "train_freq", "gradient_steps", "n_step",
                "target_update", "eval_episodes", "snapshot_every", "log_every", "threads", "num_envs", "bins",
                "tilings", "n_steps", "episodes_per_update"]
    for name in (n for n in positive if hasattr(a, n)):  # each algorithm has some of these
        if getattr(a, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if not 0 <= a.seed < 2**31:  # numpy and Keras take 32-bit seeds; evaluation uses seed + 10,000
        fail(f"--seed must be in [0, 2**31), got {a.seed}")
    for name in ["learning_starts", "epsilon_steps", "eval_every", "final_eval_episodes", "value_coef",
                 "entropy_coef"]:
        if getattr(a, name, 0) < 0:
            fail(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(a, name)}")
    for name in ["epsilon_start", "epsilon_end", "gamma", "per_alpha", "per_beta"]:
        if not 0.0 <= getattr(a, name, 0.0) <= 1.0:
            fail(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(a, name)}")
    for name in ["lr", "clip_norm", "per_eps"]:
        if not getattr(a, name, 1.0) > 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    if not a.lr_end >= 0:
        fail(f"--lr-end must be 0 or more, got {a.lr_end}")
    if hasattr(a, "buffer_size"):
        check_dqn_args(a)
    if a.episodes is not None and a.episodes < 1:
        fail(f"--episodes must be at least 1, got {a.episodes}")
    playing = a.view or a.eval or a.video or a.gif or getattr(a, "plot", None) or getattr(a, "export", None)
    uses = "--view, --eval, --video DIR, --gif FILE" + (", --plot FILE, --export DIR" if hasattr(a, "plot") else "")
    if playing and not a.model:
        fail(f"{uses.replace(' DIR', '').replace(' FILE', '')} use a saved model: add --model PATH")
    if a.model and not playing:
        fail(f"--model needs something to do: add one of {uses}")
    if a.view and (a.video or a.gif):
        fail("--view renders to a window, --video/--gif to files: use one or the other")
    check_gif_steps(a)
    if a.model and a.resume:
        fail("--model plays a snapshot and --resume continues training: use one of them")
    check_paths(a)


def check_paths(a: argparse.Namespace) -> None:
    """Files and folders named on the command line, checked before TensorFlow's seconds of loading."""
    if a.model and Path(a.model).suffix == ".onnx":
        fail(f"{a.model} is an ONNX export, which this script does not load; play it without TensorFlow with "
             f"python see.py --policy {a.model}")
    if a.model and not Path(a.model).is_file():
        final = "final.npy" if hasattr(a, "bins") else "final.keras"  # tabular.py's tables, or networks
        fail(f"no model file at {a.model}; pass a snapshot such as runs/<name>/{final}")
    if a.resume and not Path(a.resume).is_dir():
        fail(f"--resume {a.resume}: no such folder; pass the folder of a stopped run, such as runs/<name>")
    if getattr(a, "export", None):
        check_export_dir(a.export)


def check_export_dir(directory: str) -> None:
    """--export: the export goes to a new (or empty) folder in a writable one."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        fail(f"--export {directory}: that is a file; give a folder to write the exported model to")
    if path.is_dir() and any(path.iterdir()):
        fail(f"--export {directory}: the folder is not empty; remove it or give a new one")
    parent = path.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        fail(f"--export {directory}: cannot write in {parent}; give a folder in a writable place")



def check_gif_steps(a: argparse.Namespace) -> None:
    if a.gif_steps is not None and not a.gif:
        fail("--gif-steps N shortens the GIF that --gif FILE writes: add --gif FILE")
    if a.gif_steps is not None and a.gif_steps < 1:
        fail(f"--gif-steps must be at least 1, got {a.gif_steps}")


def check_dqn_args(a: argparse.Namespace) -> None:
    if a.num_envs > 1 and not is_atari(a.env):
        fail(f"--num-envs {a.num_envs}: several envs at once are for Atari games; {a.env} trains on one")
    if a.tau is not None and not 0 < a.tau <= 1:
        fail(f"--tau must be in (0, 1], got {a.tau}")
    if not 0 < a.epsilon_decay <= 1:
        fail(f"--epsilon-decay must be in (0, 1], got {a.epsilon_decay}")
    if a.batch_size > a.buffer_size:
        fail(f"--batch-size {a.batch_size} is larger than --buffer-size {a.buffer_size}; "
             "lower the batch or raise the buffer")


def seed_list(tokens: list[str]) -> list[int]:
    """--seeds 5 is seeds 0-4 (the usual count of seeds); --seeds 0 3 7 and --seeds 5-9 name them."""
    ranges = [t.split("-", 1) if "-" in t else [t, t] for t in tokens]
    if not all(a.isdigit() and b.isdigit() and int(a) <= int(b) for a, b in ranges):
        fail(f"--seeds takes seed numbers or ranges such as 5-9, got {' '.join(tokens)}")
    if len(tokens) == 1 and "-" not in tokens[0]:
        if int(tokens[0]) < 1:
            fail(f"--seeds N needs N >= 1, got {tokens[0]} (N means seeds 0..N-1: seed 0 alone is --seeds 1)")
        return list(range(int(tokens[0])))
    return [seed for a, b in ranges for seed in range(int(a), int(b) + 1)]
