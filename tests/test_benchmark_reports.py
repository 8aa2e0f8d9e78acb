"""What the benchmark reports print for a cell of several seeds and of one (benchmarks/baselines.py `mean_std`, the
one formatter quality.md, distill.md and tune.md share)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_one_seed_is_reported_without_a_spread_and_several_with_their_sample_std():
    from quality import _cell

    letters = {"A": "A"}
    assert _cell([{"f1_macro": 0.9691}], "f1_macro", letters) == "0.969"  # not "0.969 ± 0.000": one run has no spread
    rows = [{"f1_macro": value} for value in (0.80, 0.85, 0.90)]
    assert _cell(rows, "f1_macro", letters) == "0.850 ± 0.050"  # ddof=1, as the tables always said
    assert _cell([{"f1_macro": 0.9}, {"f1_macro": 0.9}], "f1_macro", letters) == "0.900 ± 0.000"  # two seeds that agree
