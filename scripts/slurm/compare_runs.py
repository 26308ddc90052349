"""Compare the runs.csv of two work folders of the same study: identical metrics required."""

import csv
import sys
from pathlib import Path

KEYS = ("run", "trainable_params", "val_score", "test_primary", "test_overall_accuracy",
        "test_macro_f1", "test_map_macro")


def rows(work: Path) -> dict[str, dict[str, str]]:
    files = sorted(work.glob("results/*/runs.csv"))
    if len(files) != 1:
        raise SystemExit(f"{work}: expected one results/<study>/runs.csv, found {files}")
    return {r["run"]: {k: r.get(k, "") for k in KEYS} for r in csv.DictReader(files[0].open())}


def main() -> None:
    a, b = rows(Path(sys.argv[1])), rows(Path(sys.argv[2]))
    if a.keys() != b.keys():
        raise SystemExit(f"different runs: {sorted(a.keys() ^ b.keys())}")
    bad = {run: (a[run], b[run]) for run in a if a[run] != b[run]}
    if bad:
        raise SystemExit(f"results differ for {len(bad)} run(s): {bad}")
    print(f"{len(a)} runs: identical metrics locally and through SLURM")


if __name__ == "__main__":
    main()
