"""The Atari games against the 2013 DQN paper, over seeds: the table and the figure in docs/results.md.

    python tools/atari_table.py bench/atari5 [more benches] [--seeds 1-1] --evals docs/atari-evals.csv \
        --runs docs/atari-runs.csv --plot docs/curves-atari.png

Reads every Atari run of the given benches (each run's summary.json and args.json) and writes its
evaluations into the evaluations CSV (game, seed, step, episodes, score: the 5-game evaluations along
the way and the 20-game final one) and what the run took into the runs CSV (game, seed, env and
gradient steps, wall minutes, peak RSS, CPU, precision). Rows of other games and seeds stay, so the
CSVs collect runs made at different times and on different machines. Then it draws one panel a game
from the evaluations, a curve a seed, and prints a markdown row a game: each seed's final score, their
mean, its human-normalised score (agent - random) / (human - random) with the random and human
references of Mnih et al. 2015, the 2013 paper's DQN score and the mean as a share of it, and each
run's minutes, CPU and precision; last the median human-normalised score over the games per seed.
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
from plumbing.settings import fail, seed_list  # noqa: E402

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
RUN_FIELDS = ["game", "seed", "steps", "gradient_steps", "minutes", "peak_rss_mb", "cpu", "precision"]


def game_of(env_id: str) -> str:
    """'ALE/SpaceInvaders-v5' -> 'SpaceInvaders'."""
    return env_id.removeprefix("ALE/").rsplit("-v", 1)[0]


def atari_runs(bench: Path) -> list[dict]:
    """The finished runs of a bench directory on the 2013 paper's games: their summary.json with the
    number of games of their evaluations along the way and their precision (args.json)."""
    runs = []
    for summary in sorted((bench / "runs").glob("*/summary.json")):
        args = json.loads((summary.parent / "args.json").read_text())
        runs.append({**json.loads(summary.read_text()), "eval_episodes": args["eval_episodes"],
                     "precision": args.get("precision", "float32")})
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


def run_row(run: dict) -> dict:
    return dict(game=game_of(run["env"]), seed=run["seed"], steps=run["steps"], gradient_steps=run["gradient_steps"],
                minutes=round(run["wall_seconds"] / 60), peak_rss_mb=round(run["peak_rss_mb"]),
                cpu=run.get("cpu", "unknown"), precision=run["precision"])


def merged(old: list[dict], new: list[dict]) -> list[dict]:
    """The CSV's rows with those of each (game, seed) in `new` replaced by the new ones."""
    replaced = {(row["game"], row["seed"]) for row in new}
    return [row for row in old if (row["game"], row["seed"]) not in replaced] + new


def read_rows(path: Path, fields: list[str]) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != fields:
            fail(f"{path} is not a CSV this tool wrote (its columns are not {','.join(fields)}); pass a new file or "
                 "one this tool wrote")
        return [{k: (v if k in ("game", "cpu", "precision") else float(v) if k == "score" else int(v))
                 for k, v in row.items()} for row in reader]


def write_rows(rows: list[dict], path: Path, fields: list[str]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, text.getvalue())


def human_normalised(game: str, score: float) -> float:
    random, human = RANDOM_AND_HUMAN[game]
    return (score - random) / (human - random)


def final_rows(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """Each (game, seed)'s final evaluation: its row with the most games, the last one if tied."""
    final: dict[tuple[str, int], dict] = {}
    for row in rows:
        key = (row["game"], row["seed"])
        if key not in final or row["episodes"] >= final[key]["episodes"]:
            final[key] = row
    return final


def table(rows: list[dict], runs: list[dict]) -> str:
    """A row a game: each seed's final score, their mean and what it is worth; each run's minutes and CPU."""
    finals = {key: row["score"] for key, row in final_rows(rows).items()}
    seeds = sorted({seed for _, seed in finals})
    took = {(r["game"], r["seed"]): r for r in runs}
    lines = ["| game | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | human-normalised | 2013 DQN | "
             "mean as its share | minutes | CPU, precision |", "|---|" + "---:|" * (len(seeds) + 5) + "---|"]
    shares = []
    for game in sorted({game for game, _ in finals}):
        scores = [finals.get((game, s)) for s in seeds]
        mean = statistics.mean(x for x in scores if x is not None)
        shares.append(mean / DQN_2013[game])
        runs_of = [took.get((game, s)) for s in seeds if (game, s) in finals]
        minutes = ", ".join(f"{r['minutes']}" if r else "-" for r in runs_of)
        machines = "; ".join(dict.fromkeys(f"{r['cpu']}, {r['precision']}" if r else "-" for r in runs_of))
        places = min(2, max(len(f"{x:g}".partition(".")[2]) for x in scores if x is not None))  # 18.15 and 18.00
        mean_places = min(2, places + (round(mean, places) != mean))  # 18 and 17: 17.5
        lines.append(f"| {game} | " + " | ".join("-" if x is None else f"{x:.{places}f}" for x in scores) +
                     f" | {mean:.{mean_places}f} | {human_normalised(game, mean):.2f} | {DQN_2013[game]} | "
                     f"{shares[-1]:.0%} | {minutes} | {machines} |")
    lines.append("")
    for seed in seeds:
        of_seed = [human_normalised(g, x) for (g, s), x in finals.items() if s == seed]
        lines.append(f"seed {seed}: median human-normalised score over {len(of_seed)} game{'s' * (len(of_seed) > 1)}: "
                     f"{statistics.median(of_seed):.2f}")
    lines.append(f"the seeds' mean is at least half the 2013 DQN's on {sum(x >= 0.5 for x in shares)} of "
                 f"{len(shares)} games")
    return "\n".join(lines)


def figure(rows: list[dict]):
    """One panel a game: its evaluations along the way against env steps, the references as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finals = final_rows(rows)
    games = sorted({game for game, _ in finals})
    columns = min(len(games), 4)
    lines = -(-len(games) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3.6 * columns, 2.9 * lines), squeeze=False)
    for ax, game in zip(axes.flat, games, strict=False):
        for i, seed in enumerate(sorted(seed for g, seed in finals if g == game)):
            curve = [(row["step"], row["score"]) for row in rows
                     if (row["game"], row["seed"]) == (game, seed) and row is not finals[game, seed]]
            if curve:
                ax.plot(*zip(*curve, strict=True), color=f"C{[0, 1, 4, 5][i % 4]}", label=f"DQN, seed {seed}")
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
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    legend_at.legend(handles.values(), handles.keys(), loc="center" if len(spare) else "best", fontsize=8)
    fig.supxlabel("environment steps", fontsize=9)
    fig.supylabel("greedy evaluation score", fontsize=9)
    fig.tight_layout()
    return fig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benches", nargs="*", type=Path, help="bench directories (bench/NAME)")
    p.add_argument("--evals", type=Path, required=True, help="the CSV of evaluations to update and draw")
    p.add_argument("--seeds", nargs="+", help="take only these seeds' runs from the benches, named as bench.py's "
                   "--seeds does (1-1: seed 1 alone)")
    p.add_argument("--runs", type=Path, help="the CSV of what each run took (minutes, CPU, precision) to update")
    p.add_argument("--plot", type=Path, help="where to draw the curves")
    a = p.parse_args()
    for bench in a.benches:
        if not (bench / "runs").is_dir():
            fail(f"{bench} is not a bench directory (no runs/ in it); pass bench/NAME of a bench.py run")
    seeds = None if a.seeds is None else seed_list(a.seeds)
    runs = [r for bench in a.benches for r in atari_runs(bench) if seeds is None or r["seed"] in seeds]
    rows = merged(read_rows(a.evals, FIELDS), [row for r in runs for row in eval_rows(r)])
    if not rows:
        fail(f"no finished run on the 2013 paper's games in the benches given, and no rows in {a.evals}")
    took = merged(read_rows(a.runs, RUN_FIELDS), [run_row(r) for r in runs]) if a.runs else [run_row(r) for r in runs]
    write_rows(rows, a.evals, FIELDS)
    if a.runs:
        write_rows(took, a.runs, RUN_FIELDS)
    if a.plot:
        fig = figure(rows)
        write_atomically(a.plot, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    print(table(rows, took))
    return 0


if __name__ == "__main__":
    sys.exit(main())
