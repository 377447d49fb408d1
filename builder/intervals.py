"""Percentile bootstrap intervals for a mean over prompts, seeded so that a table's intervals are the same each run.

A pair version holds one pair per prompt, so resampling its pairs with replacement is resampling prompts. The
interval is the 2.5th and 97.5th percentile (numpy's linear interpolation) of the means of `RESAMPLES` resamples.
Each interval has its own seed, derived from what it describes (the pair version and the figure), so adding rows
to a table never moves the intervals already in it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from builder.fingerprint import content_hash

RESAMPLES = 2000
LEVEL = 0.95
# Resample indices drawn per block, so a version of a million pairs never holds RESAMPLES x n indices at once.
_BLOCK = 20_000_000


def interval_seed(*parts: object) -> int:
    return int(content_hash([str(part) for part in parts])[:8], 16)


def mean_interval(values: Sequence[float | None], seed: int, *, resamples: int = RESAMPLES,
                  level: float = LEVEL) -> tuple[float | None, float | None]:
    """(low, high) of the percentile bootstrap interval of the mean of `values` (nulls and NaNs left out).

    Fewer than two values have no spread to resample: (None, None).
    """
    import numpy as np

    kept = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(kept) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    per_block = max(1, _BLOCK // len(kept))
    means = np.concatenate([
        kept[rng.integers(0, len(kept), size=(min(per_block, resamples - start), len(kept)))].mean(axis=1)
        for start in range(0, resamples, per_block)
    ])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
