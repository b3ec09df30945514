"""Time to train the default model on 2 CPU threads (target: at most 20 minutes).

Runs exactly what `make model` runs (models/default/train.toml) but writes into a temporary
directory, so the shipped artifact is untouched. Prints the wall time and, for the record, the
held-out pinball ratio to the EWMA band the run reached. Takes minutes.
Usage: .venv/bin/python bench/bench_train.py [--config PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchkit import figure

from trainer.pipeline import load_config, run_training

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "models" / "default" / "train.toml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, store_override=Path(tmp) / "history")
        started = time.monotonic()
        outcome = run_training(cfg, out_dir=Path(tmp) / "out", log=lambda _: None)
        seconds = time.monotonic() - started
    mean = outcome.report["all"]["contenders"]["model"]["mean"]
    for name, value, unit, target, better in (
        ("train_default_model", seconds, "s", 1200.0, "lower"),
        ("default_model_pinball_ratio_ewma", mean["pinball_ratio_ewma"], "ratio", 0.97, "lower"),
    ):
        figure(name, round(value, 4), unit, target, better)


if __name__ == "__main__":
    main()
