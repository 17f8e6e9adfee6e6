"""Atari from pixels: the evaluation env's preprocessing, the training games' episodes and what
the loop stores of them, and a short real Pong training that plays back."""

import csv
import json

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import run_main, scalars, script

import run
from atari import AtariGames, conv_torso, evaluate, play_games, q_function
from frame_replay import FrameReplayBuffer
from plumbing.envs import make_env
from plumbing.keras_files import load_model
from plumbing.settings import final_eval_seed


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


def test_training_games_end_an_episode_at_each_lost_life_and_store_what_was_seen():
    """Breakout in two ale_py games, random actions, through the loop's replay.store() into the frame
    replay: a lost life is terminated but the frames go on; a game over starts a zero-padded
    stack; every stored transition is one the envs really produced."""
    games = AtariGames("ALE/Breakout-v5", num_envs=2, threads=1)
    obs, _ = games.reset(seed=0)
    replay = FrameReplayBuffer(2 * 3000, num_envs=2, n_step=1)
    replay.start_all(obs)
    rng, seen, kinds = np.random.default_rng(0), set(), {"life": 0, "game": 0}
    for _ in range(600):
        actions = rng.integers(4, size=2)
        before = obs
        served = games.serve.copy()
        obs, rewards, terminated, truncated, info = games.step(actions)
        actions = info["actions"]
        assert np.all(actions[served] == 1)  # FIRE, after a lost life
        replay.store(actions, np.sign(rewards), obs, terminated, truncated, info)
        for env in range(2):
            done = terminated[env] or truncated[env]
            next_obs = info["final_obs"][env] if done else obs[env]
            np.testing.assert_array_equal(next_obs[:3], before[env][1:])  # the step's own next frame
            if "episode" in info and info["_episode"][env]:
                kinds["game"] += 1
                assert not obs[env][:3].any()  # the next game's first stack
            elif terminated[env]:
                kinds["life"] += 1
                np.testing.assert_array_equal(obs[env], next_obs)  # the game goes on
                assert games.serve[env]
            seen.add((before[env].tobytes(), int(actions[env]), float(np.sign(rewards[env])), next_obs.tobytes(),
                      bool(terminated[env])))
    games.close()
    assert kinds["life"] >= 5 and kinds["game"] >= 1
    slots = np.flatnonzero(replay.sampleable(np.arange(2 * 3000)))
    batch = replay.transitions(slots)
    stored = {(batch.obs[i].tobytes(), int(batch.action[i]), float(batch.reward[i]), batch.next_obs[i].tobytes(),
               bool(batch.terminated[i])) for i in range(len(slots))}
    assert len(slots) == 1200 and stored == seen


def test_evaluation_games_are_whole_games_and_each_slot_gives_its_first_ones():
    """Breakout, random play, 3 games on 2 slots: a lost life does not end a game, and the scores
    are slot 0's first two games and slot 1's first, whichever games end first."""
    games = AtariGames("ALE/Breakout-v5", num_envs=2, threads=1, lives_end_episodes=False)
    ends, lives_lost, step = [], 0, games.step

    def step_and_record(actions):
        nonlocal lives_lost
        lives = games.lives
        out = step(actions)
        terminated, info = out[2], out[4]
        lives_lost += int(np.sum((info["lives"] < lives) & ~terminated))
        assert np.all(lives[terminated] == 1)  # only the last life ends a game
        ends.extend((env, info["episode"]["r"][env]) for env in np.flatnonzero(info.get("_episode", [])))
        return out

    games.step = step_and_record
    rng = np.random.default_rng(0)
    scores = list(play_games(games, lambda obs: rng.integers(4, size=len(obs)), count=3, seed=0))
    games.close()
    quota, expected = [2, 1], []
    for env, score in ends:
        if quota[env]:
            quota[env] -= 1
            expected.append(score)
    assert scores == expected and len(scores) == 3
    assert lives_lost >= 3 * 4  # five lives a game


def test_breakout_serves_for_the_agent_so_an_agent_that_never_fires_loses_its_five_lives_fast():
    """Breakout waits for FIRE before each ball: without it pressed for the agent, an agent that
    never fires would play one ball, then wait until the 108,000-frame cap (27,000 steps)."""
    games = AtariGames("ALE/Breakout-v5", num_envs=2, threads=1, lives_end_episodes=False)
    steps, step = 0, games.step

    def step_and_count(actions):
        nonlocal steps
        steps += 1
        return step(actions)

    games.step = step_and_count
    assert len(list(play_games(games, lambda obs: np.zeros(len(obs), int), count=2, seed=0))) == 2
    games.close()
    env = make_env("ALE/Breakout-v5")
    lengths = []
    env.reset(seed=0)
    for length in range(1, 3000):
        *_, terminated, truncated, _ = env.step(0)
        if terminated or truncated:
            lengths.append(length)
            break
    env.close()
    assert steps < 3000 and lengths and not truncated


def test_a_game_without_lives_is_one_episode_and_the_agent_keeps_its_actions():
    """Enduro has no lives (ale_py reports 0 throughout): no step may look like a lost life, which
    would end a training episode and replace the agent's next action by FIRE (its accelerator)."""
    games = AtariGames("ALE/Enduro-v5", num_envs=2, threads=1)
    obs, info = games.reset(seed=0)
    assert np.all(info["lives"] == 0)
    rng = np.random.default_rng(0)
    for _ in range(300):  # 1,200 frames of racing
        actions = rng.integers(games.single_action_space.n, size=2)
        obs, rewards, terminated, truncated, info = games.step(actions)
        np.testing.assert_array_equal(info["actions"], actions)
        assert not (terminated.any() or truncated.any() or games.serve.any())
    games.close()


@pytest.mark.slow
def test_every_variant_updates_the_conv_network(tmp_path):
    """Double, dueling, prioritized replay over frames, soft target updates (n-step 3 and the Huber
    loss are the preset's): a few real gradient steps on Pong move the weights away from where the
    seed started them, the losses are finite, the importance weights are in (0, 1], the snapshot loads."""
    flags = ["--env", "ALE/Pong-v5", "--threads", "1", "--num-envs", "2", "--steps", "300", "--learning-starts", "200",
             "--train-freq", "20", "--gradient-steps", "2", "--buffer-size", "2000", "--double", "--dueling", "avg",
             "--prioritized", "--tau", "0.01", "--eval-every", "0", "--final-eval-episodes", "0", "--log-every", "100"]
    assert run_main(*flags, "--logdir", tmp_path, "--name", "all") == 0
    curves = scalars(tmp_path / "all")
    assert "train/tau" in curves and all(0 < w <= 1 for _, w in curves["train/is_weight"])
    assert all(np.isfinite(loss) for _, loss in curves["train/loss"])
    model = load_model(str(tmp_path / "all" / "final.keras"), make_env("ALE/Pong-v5"))
    assert model.get_layer("dueling").mode == "avg"
    args = run.parse_args(flags)
    started = run.new_state(args, (4, 84, 84), 6, None, torso=conv_torso, obs_dtype="uint8").model  # as the run began
    assert json.loads((tmp_path / "all" / "summary.json").read_text())["gradient_steps"] == 12  # at 200, 220, ..., 300
    moved = [np.abs(w - w0).max() for w, w0 in zip(model.get_weights(), started.get_weights(), strict=True)]
    assert min(moved) > 0  # every layer, the conv ones included, took gradient steps


@pytest.mark.slow
def test_a_short_breakout_training_runs_its_snapshot_plays_back_and_it_enters_the_atari_table(tmp_path, capsys):
    assert run_main("--env", "ALE/Breakout-v5", "--threads", "1", "--num-envs", "4", "--steps", "800",
                    "--learning-starts", "400", "--train-freq", "40", "--gradient-steps", "2", "--buffer-size", "4000",
                    "--eval-every", "0", "--final-eval-episodes", "3", "--no-keep-best", "--snapshot-every", "400",
                    "--log-every", "400", "--logdir", tmp_path / "runs", "--name", "breakout") == 0
    run_dir = tmp_path / "runs" / "breakout"  # tmp_path is laid out as a bench
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "finished" and s["steps"] == 800 and s["final_eval_episodes"] == 3
    assert (run_dir / "step_400.keras").is_file() and (run_dir / "checkpoint.npz").is_file()
    # The final evaluation: three whole games (all five lives each) played greedily by final.keras from the
    # final evaluation's seed on the preset's 5 evaluation games; Breakout's scores vary with the seed.
    model = load_model(str(run_dir / "final.keras"), make_env("ALE/Breakout-v5"))
    games = AtariGames("ALE/Breakout-v5", 5, threads=1, lives_end_episodes=False)
    assert s["final_eval_mean"] == pytest.approx(evaluate(games, q_function(model), 3, final_eval_seed(0)).mean())
    games.close()
    out = capsys.readouterr().out
    # steps count all 4 games: 2 gradient steps at each multiple of 40 from 400 to 800
    assert "replay: 4,000 frames" in out and "800 steps and 22 gradient steps in " in out
    assert s["gradient_steps"] == 22
    gif = tmp_path / "breakout.gif"
    assert run_main("--model", run_dir / "final.keras", "--eval", "--episodes", "1", "--gif", gif, "--seed", "3") == 0
    # no --env: the run folder's args.json says it
    assert "ALE/Breakout-v5: mean return" in capsys.readouterr().out
    assert len(iio.imread(gif)) > 30  # a whole game of five lives, every 2nd frame (one lost life is ~10)

    # tools/atari_table.py: the run replaces its game and seed's old rows in the CSVs; the others stay
    evals, took = tmp_path / "evals.csv", tmp_path / "runs.csv"
    evals.write_text("game,seed,step,episodes,score\nBreakout,0,2000000,20,75.7\nPong,0,100000,5,-15.0\n"
                     "Pong,0,2000000,20,18.0\nPong,0,2000000,5,19.2\nPong,1,2000000,20,17.0\n")
    took.write_text("game,seed,steps,gradient_steps,minutes,peak_rss_mb,cpu,precision\n"
                    "Breakout,0,2000000,247504,101,1684,AVX-512 with AMX,float32\n")
    before = evals.read_text()
    r = script("tools/atari_table.py", tmp_path, "--seeds", "1-1", "--evals", evals, cwd=tmp_path)  # seed 1 alone
    assert r.returncode == 0 and evals.read_text() == before, r.stderr
    r = script("tools/atari_table.py", tmp_path, "--evals", evals, "--runs", took, "--plot", tmp_path / "atari.png",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(evals.open()))
    assert [(row["game"], row["seed"], row["step"], row["episodes"]) for row in rows] == \
        [("Pong", "0", "100000", "5"), ("Pong", "0", "2000000", "20"), ("Pong", "0", "2000000", "5"),
         ("Pong", "1", "2000000", "20"), ("Breakout", "0", "800", "3")]
    score = float(rows[-1]["score"])
    assert score == pytest.approx(s["final_eval_mean"])
    (run_row,) = csv.DictReader(took.open())
    assert run_row == dict(game="Breakout", seed="0", steps="800", gradient_steps="22",
                           minutes=str(round(s["wall_seconds"] / 60)), peak_rss_mb=str(round(s["peak_rss_mb"])),
                           cpu=s["cpu"], precision=json.loads((run_dir / "args.json").read_text())["precision"])
    breakout = (score - 1.7) / (31.8 - 1.7)  # Mnih et al. 2015's random and human scores
    pong0, pong1 = (18.0 + 20.7) / 30.0, (17.0 + 20.7) / 30.0  # the 20-game rows, not the 5-game ones
    shown = f"{score:.0f}" if score == int(score) else f"{score:.2f}"  # a mean of 3 games: at most 2 decimals
    assert (f"| Breakout | {shown} | - | {shown} | {breakout:.2f} | 168 | {score / 168:.0%} | "
            f"{run_row['minutes']} | {run_row['cpu']}, {run_row['precision']} |") in r.stdout
    assert f"| Pong | 18 | 17 | 17.5 | {(17.5 + 20.7) / 30:.2f} | 20 | 88% | -, - | - |" in r.stdout
    assert f"seed 0: median human-normalised score over 2 games: {(pong0 + breakout) / 2:.2f}" in r.stdout
    assert f"seed 1: median human-normalised score over 1 game: {pong1:.2f}" in r.stdout
    assert f"half the 2013 DQN's on {1 + (score >= 84)} of 2 games" in r.stdout
    assert iio.imread(tmp_path / "atari.png").shape[1] == 720  # two panels of 3.6 inches at 100 dpi
