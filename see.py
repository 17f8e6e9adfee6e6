"""A random agent on MountainCar: what the task looks like before any learning.

    python see.py                      # a few episodes in a window, each return printed
    python see.py --video videos/      # headless: mp4s instead of a window
    python see.py --gif random.gif     # the first episode as an animated GIF

Pushing left or right at random never builds enough momentum to reach the flag within the
200-step limit, so every episode returns -200: the reward DQN has to learn from is the same
-1 on every step until it first gets there by systematic exploration.

No TensorFlow is loaded: a random agent needs none, and it starts in about a second.
"""

import sys

from plumbing.envs import play_env, show_episodes
from plumbing.settings import Parser, fail


def main(argv: list[str] | None = None) -> int:
    p = Parser(description="A random agent on a Gymnasium env (default MountainCar-v0).")
    p.add_argument("--env", default="MountainCar-v0", help="Gymnasium env id")
    p.add_argument("--episodes", type=int, default=3, help="episodes to play")
    p.add_argument("--seed", type=int, default=0, help="seeds the env and the random actions")
    p.add_argument("--video", metavar="DIR", default=None, help="write an mp4 of every episode to DIR (no window)")
    p.add_argument("--gif", metavar="FILE", default=None, help="write the first episode as an animated GIF (no window)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        fail(f"--episodes must be at least 1, got {args.episodes}")
    env = play_env(args.env, view=not (args.video or args.gif), video=args.video, gif=args.gif)
    env.action_space.seed(args.seed)
    show_episodes(env, lambda obs: env.action_space.sample(), args.episodes, args.seed, args.gif)
    return 0


if __name__ == "__main__":
    sys.exit(main())
