"""The rank regime: VeRA at r = J/16, J/4, 2J/3 against TeRA schemes of comparable parameters.

MiniLM-L6 (J = 384: q and v are 384 x 384), the default preset's budget, the ablation tasks,
3 seeds, every method at its own learning rate chosen on validation (the harness's protocol).
Runs go to ``<out>/`` (resumable). Runs identical to the ablations' (same preset, tasks,
splits and seeds: ``tera``, ``vera``, ``tera(out_mode=384)``, ``tera(in_modes=(8,8,6))``)
are read from ``--reuse`` (``benchmarks/results/ablations/results.json``) instead of redone.

    python benchmarks/rank_regime.py                # run what is missing, write the tables
    python benchmarks/rank_regime.py --tables-only  # rewrite rank_regime.md and the plot
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tera.compare.presets import PRESETS
from tera.compare.run import compare

TASKS = ("multiemo/all_sentence_en", "fact_checker/fever")
#: Run here (the rest come from the ablations).
NEW = ("vera(r=match)", "vera(r=24)", "vera(r=96)", "tera(out_modes=(16,24))")


def main(argv: list[str] | None = None) -> int:
    """Run the rank-regime methods (what the ablations lack) and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/rank-regime")
    parser.add_argument("--methods", default=",".join(NEW))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    from tera.compare.methods import split_specs

    preset = PRESETS["default"].with_overrides(
        methods=tuple(split_specs(args.methods)), tasks=TASKS, seeds=args.seeds
    )
    out = Path(args.out)
    compare(preset, out, resume=(out / "compare.json").is_file())
    return 0


if __name__ == "__main__":
    sys.exit(main())
