"""Time and peak memory of phase 1's blend index in the original order against megatron-core's own.

    .venv/bin/python bench/data_order.py [--fraction 1.0]

Builds, each in a child process, the blend index of phase 1's 140 datasets at full size: the original order's
(lucie_nemo.data.original_order.blend_indices: the fork's 765,955,378 slots, megatron-core's greedy blending
helper, then the year curriculum) and megatron-core's (its BlendedDataset's sizing, sum(ceil(T * w)) =
762,144,653 slots, and the same helper). Prints each one's wall time and peak RSS (the kernel's figure for the
child) and the ratios. ``--fraction`` scales the train samples for a quick run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path, PurePath

import child_peak  # bench/child_peak.py, beside this script

GIB = 2**30
SIDES = ("megatron", "original")


def build(side: str, fraction: float) -> dict:
    """Build one side's index here; its slot count, seconds and year-group share."""
    import numpy as np
    from megatron.core.datasets import helpers
    from megatron.core.datasets.utils import normalize

    from lucie_nemo.data import fork_rules
    from lucie_nemo.data.blends import phase_blend
    from lucie_nemo.data.original_order import blend_indices
    from lucie_nemo.phases import PRETRAIN

    blend = phase_blend("pretrain", Path("/data"))
    samples = int(PRETRAIN.train_samples * fraction)
    names = [PurePath(prefix).name for prefix in blend.prefixes]
    start = time.perf_counter()
    if side == "original":
        size = sum(fork_rules.dataset_samples(blend.weights, samples))
        dataset_index, _ = blend_indices(normalize(fork_rules.normalized_weights(blend.weights)), size, names)
    else:
        weights = normalize(blend.weights)
        size = sum(math.ceil(samples * weight) for weight in weights)
        dataset_index = np.zeros(size, dtype=np.int16)
        helpers.build_blending_indices(dataset_index, np.zeros(size, dtype=np.int64), weights, len(weights), size,
                                       False)
    seconds = time.perf_counter() - start
    grouped = [position for group in fork_rules.year_groups(names) for position in group]
    counts = sum(np.bincount(dataset_index[start:start + 2**24], minlength=len(names))
                 for start in range(0, size, 2**24))
    share = float(counts[grouped].sum() / size)
    return {"slots": size, "seconds": seconds, "year_group_share": share}


def measure(side: str, fraction: float) -> dict:
    """``build`` in a child process, with the child's peak RSS (bench/child_peak.py)."""
    run = child_peak.measure([sys.executable, __file__, "--side", side, "--fraction", str(fraction)], capture=True)
    if run.exit_code:
        raise SystemExit(f"the {side} build failed (exit {run.exit_code})")
    return json.loads(run.output.splitlines()[-1]) | {"peak_rss_gib": run.peak_rss / GIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=1.0, help="share of phase 1's train samples (default 1)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.side:
        from lucie_nemo import runtime

        runtime.quiet_imports()
        print(json.dumps(build(args.side, args.fraction)))
        return
    results = {side: measure(side, args.fraction) for side in SIDES}
    for side, result in results.items():
        print(f"{side:>9}: {result['slots']:>13,} slots  {result['seconds']:8.1f} s  peak RSS "
              f"{result['peak_rss_gib']:5.2f} GiB  (year groups: {result['year_group_share']:.1%} of the slots)")
    original, megatron = results["original"], results["megatron"]
    print(f"original / megatron-core: time {original['seconds'] / megatron['seconds']:.2f}x, peak RSS "
          f"{original['peak_rss_gib'] / megatron['peak_rss_gib']:.2f}x (goal: time <= 1.5x)")


if __name__ == "__main__":
    main()
