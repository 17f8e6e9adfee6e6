"""notebooks/dqn.ipynb, executed top to bottom in a fresh Jupyter kernel as a learner runs it: a cell that
raises fails the test, and the training it runs must learn."""

import re
import shutil

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_and_its_car_learns():
    notebook = nbformat.read(ROOT / "notebooks" / "dqn.ipynb", as_version=4)
    before = set((ROOT / "runs").glob("notebook-*"))
    try:
        NotebookClient(notebook, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
        made = set((ROOT / "runs").glob("notebook-*")) - before
        assert len(made) == 1
        assert {"final.keras", "value_map.png", "trained.gif"} <= {p.name for p in made.pop().iterdir()}
    finally:  # the notebook trains into the repository's runs/, as a learner's would
        for run_dir in set((ROOT / "runs").glob("notebook-*")) - before:
            shutil.rmtree(run_dir)
    text = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    played = float(re.search(r"greedy return over 20 new episodes: (-?\d+\.\d)", text).group(1))
    assert played >= -130  # a random agent returns -200 on every episode
    images = [kind for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              for kind in o.get("data", {}) if kind.startswith("image/")]
    assert images.count("image/png") == 3 and images.count("image/gif") == 1  # frames, curves, maps; the car
