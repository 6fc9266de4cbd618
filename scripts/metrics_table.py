"""Print a run's evaluated dictionaries as a Markdown table (for docs):
`python scripts/metrics_table.py RUN`."""

from __future__ import annotations

import sys
from pathlib import Path

from monosemantic.report import load_saes


def main(run_dir: str) -> None:
    print("| dictionary | features | L0 | variance explained | dead % | dense % | loss recovered |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for sae in sorted(load_saes(Path(run_dir)), key=lambda s: (s.name.split("-")[0], s.n_features)):
        m = sae.metrics
        if not m:
            continue
        print(
            f"| {sae.name} | {sae.n_features:,} | {m['l0']:.1f} | {m['variance_explained']:.3f} | "
            f"{100 * m['dead_fraction']:.1f} | {100 * m['dense_fraction']:.1f} | "
            f"{m.get('loss_recovered', float('nan')):.3f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
