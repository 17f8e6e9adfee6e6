"""The Atari games against the 2013 DQN paper: the table and the figure in docs/results.md.

    python tools/atari_table.py bench/atari5 [more benches] --evals docs/atari-evals.csv \
        --plot docs/curves-atari.png

Reads every Atari run of the given benches (each run's summary.json) and writes its evaluations
into the CSV (game, seed, step, episodes, score): the 5-game evaluations along the way and the
20-game final one. Rows of games not in these benches stay, so one CSV collects runs made at
different times. Then it draws one panel a game from the CSV and prints a markdown row a game:
the final score, its human-normalised score (agent - random) / (human - random) with the random
and human references of Mnih et al. 2015, the 2013 paper's DQN score, env and gradient steps, wall
time and peak RSS (those four only for runs in the benches), and last the median over the games.
"""

import argparse
import csv
import io
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's plumbing/

from plumbing.atomic import write_atomically, write_text_atomically  # noqa: E402
from plumbing.settings import fail  # noqa: E402

# Mnih et al. 2015 ("Human-level control through deep reinforcement learning", Extended Data
# Table 2): a random agent and a professional human tester, 5 minutes of play each.
RANDOM_AND_HUMAN = {
    "BeamRider": (363.9, 5774.7), "Breakout": (1.7, 31.8), "Enduro": (0.0, 309.6), "Pong": (-20.7, 9.3),
    "Qbert": (163.9, 13455.0), "Seaquest": (68.4, 20181.8), "SpaceInvaders": (148.0, 1652.3),
}
# Mnih et al. 2013 ("Playing Atari with Deep Reinforcement Learning", Table 1): DQN's average score,
# epsilon = 0.05, no sticky actions, 10M frames.
DQN_2013 = {"BeamRider": 4092, "Breakout": 168, "Enduro": 470, "Pong": 20, "Qbert": 1952, "Seaquest": 1705,
            "SpaceInvaders": 581}
FIELDS = ["game", "seed", "step", "episodes", "score"]


def game_of(env_id: str) -> str:
    """'ALE/SpaceInvaders-v5' -> 'SpaceInvaders'."""
    return env_id.removeprefix("ALE/").rsplit("-v", 1)[0]


def atari_runs(bench: Path) -> list[dict]:
    """The finished runs of a bench directory on the 2013 paper's games: their summary.json and
    the number of games of their evaluations along the way."""
    runs = []
    for summary in sorted((bench / "runs").glob("*/summary.json")):
        args = json.loads((summary.parent / "args.json").read_text())
        runs.append({**json.loads(summary.read_text()), "eval_episodes": args["eval_episodes"]})
    return [r for r in runs if r["env"].startswith("ALE/") and r["status"] == "finished"
            and game_of(r["env"]) in DQN_2013]  # the table's references are for the paper's seven


def eval_rows(run: dict) -> list[dict]:
    """A run's evaluations along the way and its final one, as CSV rows."""
    game, seed = game_of(run["env"]), run["seed"]
    rows = [dict(game=game, seed=seed, step=step, episodes=run["eval_episodes"], score=score)
            for step, score in run["evals"]]
    rows.append(dict(game=game, seed=seed, step=run["steps"], episodes=run["final_eval_episodes"],
                     score=run["final_eval_mean"]))
    return rows


def merged(old: list[dict], runs: list[dict]) -> list[dict]:
    """The CSV's rows with those of the games in `runs` replaced by the runs' own."""
    games = {game_of(r["env"]) for r in runs}
    return [row for row in old if row["game"] not in games] + [row for r in runs for row in eval_rows(r)]


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != FIELDS:
            fail(f"{path} is not a CSV of evaluations (its columns are not {','.join(FIELDS)}); pass a new file or one "
                 "this tool wrote")
        return [dict(game=r["game"], seed=int(r["seed"]), step=int(r["step"]), episodes=int(r["episodes"]),
                     score=float(r["score"])) for r in reader]


def write_rows(rows: list[dict], path: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, text.getvalue())


def human_normalised(game: str, score: float) -> float:
    random, human = RANDOM_AND_HUMAN[game]
    return (score - random) / (human - random)


def final_rows(rows: list[dict]) -> dict[str, dict]:
    """Each game's final evaluation: its row with the most games, the last one if tied."""
    final: dict[str, dict] = {}
    for row in rows:
        if row["game"] not in final or row["episodes"] >= final[row["game"]]["episodes"]:
            final[row["game"]] = row
    return final


def table(rows: list[dict], runs: list[dict]) -> str:
    by_game = {game_of(r["env"]): r for r in runs}
    lines = ["| game | final score | human-normalised | 2013 DQN | env steps | gradient steps | "
             "wall minutes | peak RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    finals = {game: row["score"] for game, row in final_rows(rows).items()}
    for game, score in sorted(finals.items()):
        r = by_game.get(game)
        run = (f"{r['steps']:,} | {r['gradient_steps']:,} | {r['wall_seconds'] / 60:.0f} | {r['peak_rss_mb']:,.0f}"
               if r else "- | - | - | -")
        lines.append(f"| {game} | {score:g} | {human_normalised(game, score):.2f} | {DQN_2013[game]} | {run} |")
    median = statistics.median(human_normalised(g, s) for g, s in finals.items())
    lines.append(f"\nmedian human-normalised score over {len(finals)} games: {median:.2f}")
    return "\n".join(lines)


def figure(rows: list[dict]):
    """One panel a game: its evaluations along the way against env steps, the references as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finals = final_rows(rows)
    games = sorted(finals)
    columns = min(len(games), 4)
    lines = -(-len(games) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3.6 * columns, 2.9 * lines), squeeze=False)
    for ax, game in zip(axes.flat, games, strict=False):
        curve = [(row["step"], row["score"]) for row in rows if row["game"] == game and row is not finals[game]]
        if curve:
            ax.plot(*zip(*curve, strict=True), color="C0", label="DQN, greedy")
        random, human = RANDOM_AND_HUMAN[game]
        ax.axhline(random, color="grey", linestyle=":", linewidth=1, label="random (2015)")
        ax.axhline(human, color="C2", linestyle=":", linewidth=1, label="human (2015)")
        ax.axhline(DQN_2013[game], color="C3", linestyle="--", linewidth=1, label="2013 DQN")
        ax.set_title(game, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1e6:g}M")
    spare = axes.flat[len(games):]
    for ax in spare:
        ax.axis("off")
    legend_at = spare[0] if len(spare) else axes.flat[0]  # an empty panel holds the legend if there is one
    legend_at.legend(*axes.flat[0].get_legend_handles_labels(), loc="center" if len(spare) else "best", fontsize=8)
    fig.supxlabel("environment steps", fontsize=9)
    fig.supylabel("greedy evaluation score", fontsize=9)
    fig.tight_layout()
    return fig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benches", nargs="*", type=Path, help="bench directories (bench/NAME)")
    p.add_argument("--evals", type=Path, required=True, help="the CSV of evaluations to update and draw")
    p.add_argument("--plot", type=Path, help="where to draw the curves")
    a = p.parse_args()
    for bench in a.benches:
        if not (bench / "runs").is_dir():
            fail(f"{bench} is not a bench directory (no runs/ in it); pass bench/NAME of a bench.py run")
    runs = [r for bench in a.benches for r in atari_runs(bench)]
    rows = merged(read_rows(a.evals), runs)
    if not rows:
        fail(f"no finished run on the 2013 paper's games in the benches given, and no rows in {a.evals}")
    write_rows(rows, a.evals)
    if a.plot:
        fig = figure(rows)
        write_atomically(a.plot, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    print(table(rows, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
