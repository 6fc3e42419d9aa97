"""`fast` (Fast-VTrans): the full VTrans pipeline on a small random subset of the training data.

The paper reports that ~3% of the data keeps quality close to full VTrans; the subset is
max(fast_fraction * N, fast_min_examples) rows (default floor 1,024: see options.py), drawn with
options.seed.
"""
from __future__ import annotations

from ..data import Split
from .vtrans import VTrans


def subset_size(n_rows: int, options) -> int:
    return min(n_rows, max(int(round(options.fast_fraction * n_rows)), options.fast_min_examples))


class FastVTrans(VTrans):
    name = "fast"
    shortens_ranking_on_small_files = False

    def train_rows(self, train: Split, options) -> Split:
        return train.sample(subset_size(len(train), options), seed=options.seed)
