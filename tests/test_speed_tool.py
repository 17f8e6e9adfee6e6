"""tools/speed.py's accounting of where an Atari training's time goes: each part's seconds leave out
the parts timed inside it, except in a part that keeps all it calls (an evaluation's games)."""

import sys
import time

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from speed import PartTimer  # noqa: E402


def test_a_part_leaves_out_the_parts_inside_it_unless_it_keeps_them():
    for including in (False, True):
        timer = PartTimer()
        inner = timer.wrap("sampling", lambda: time.sleep(0.05))
        outer = timer.wrap("evaluation" if including else "learning", lambda inner=inner: (time.sleep(0.05), inner()),
                           including=including)
        t0 = time.perf_counter()
        outer()
        total = time.perf_counter() - t0
        if including:
            assert timer.calls == {"evaluation": 1} and 0.1 <= timer.seconds["evaluation"] <= total
        else:
            assert timer.calls == {"learning": 1, "sampling": 1}
            assert timer.seconds["learning"] >= 0.05 and timer.seconds["sampling"] >= 0.05
            assert abs(timer.seconds["learning"] + timer.seconds["sampling"] - total) < 0.005  # counted once
