"""Watch an agent without TensorFlow: a random one (what the task looks like before any learning),
or a trained Q-network exported to ONNX, played greedily with onnxruntime.

    python see.py                      # a random agent, a few episodes in a window, each return printed
    python see.py --video videos/      # headless: mp4s instead of a window
    python see.py --gif random.gif     # the first episode as an animated GIF
    python see.py --policy exported/model.onnx --eval   # a policy from run.py --export: 100 episodes' mean

Pushing left or right at random never builds enough momentum to reach the flag within the
200-step limit, so every episode returns -200: the reward DQN has to learn from is the same
-1 on every step until it first gets there by systematic exploration.

No TensorFlow is loaded, so it starts several times faster than run.py --model.
"""

import sys

from plumbing.envs import make_env, play_env, play_saved
from plumbing.serving import check_fits, onnx_q_values
from plumbing.settings import Parser, check_gif_steps, fail


def main(argv: list[str] | None = None) -> int:
    p = Parser(description="A random agent, or an exported ONNX policy, on a Gymnasium env (default MountainCar-v0).")
    p.add_argument("--env", default=None, help="Gymnasium env id (default: the one --policy was exported from, "
                                               "else MountainCar-v0)")
    p.add_argument("--policy", metavar="FILE", default=None,
                   help="an ONNX Q-network written by run.py --export, played greedily (default: random actions)")
    p.add_argument("--episodes", type=int, default=None, help="episodes to play (default: 100 with --eval, else 3)")
    p.add_argument("--seed", type=int, default=0, help="seeds the env and the random actions")
    p.add_argument("--view", action="store_true", help="show the episodes in a window (the default without "
                                                       "--eval, --video or --gif)")
    p.add_argument("--eval", action="store_true", help="print only the mean ± std and 'solved'")
    p.add_argument("--video", metavar="DIR", default=None, help="write an mp4 of every episode to DIR (no window)")
    p.add_argument("--gif", metavar="FILE", default=None, help="write the first episode as an animated GIF (no window)")
    p.add_argument("--gif-steps", type=int, metavar="N", default=None,
                   help="only the first N steps of it in the GIF (default: the whole episode)")
    args = p.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        fail(f"--episodes must be at least 1, got {args.episodes}")
    if args.view and (args.video or args.gif):
        fail("--view renders to a window, --video/--gif to files: use one or the other")
    check_gif_steps(args)
    q_values, expects = onnx_q_values(args.policy) if args.policy else (None, {})
    args.env = args.env or expects.get("env_id") or "MountainCar-v0"
    if q_values:
        check_fits(args.policy, expects, make_env(args.env))  # before a window opens
    view = args.view or not (args.eval or args.video or args.gif)
    env = play_env(args.env, view=view, video=args.video, gif=args.gif, gif_steps=args.gif_steps)
    env.action_space.seed(args.seed)
    policy = (lambda obs: int(q_values(obs[None])[0].argmax())) if q_values else lambda obs: env.action_space.sample()
    play_saved(args, env, policy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
