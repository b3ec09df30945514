"""The real bars the trainer's tests learn from and score on, the training config over them,
and models exported as the trainer publishes them.

``models/data``: Binance spot BTCUSDT and ETHUSDT 1-minute klines, 2023-03-16 22:15 ..
2023-05-01 21:01 UTC, with one real 80-minute gap on 2023-03-24.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.data import read_csv_bars
from trainer.dataset import Series, Split, parse_iso_ms
from trainer.export import attach_metadata, export_onnx, make_version, model_spec
from trainer.model import QuantileLSTM

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "models" / "data"
FIXTURES = REPO / "tests" / "fixtures" / "trainer"
MIN = 60_000
SYMBOLS = ("BTCUSDT", "ETHUSDT")

# the evaluation tests: a month to fit the bands on, then one day to score
FIT = Split("fit", parse_iso_ms("2023-03-17"), parse_iso_ms("2023-04-17"))
EVAL = Split("eval", parse_iso_ms("2023-04-24"), parse_iso_ms("2023-04-25"))
# the training tests: three days to train on; validation and test follow, each test file
# leaving the embargo its window needs
TRAIN = Split("train", parse_iso_ms("2023-04-19"), parse_iso_ms("2023-04-22"))


def minutes_file(symbol: str) -> Path:
    return DATA / f"{symbol}_1m_20230316_20230501.csv.gz"


def binance_series(symbol: str, start_ms: int | None = None, end_ms: int | None = None) -> Series:
    """``symbol``'s minutes: all of them, or those opening in ``[start_ms, end_ms)``."""
    bars = read_csv_bars(minutes_file(symbol)).bars
    if start_ms is not None and end_ms is not None:
        bars = bars.between(start_ms, end_ms)
    return Series.from_table("binance", symbol, MIN, bars)


def both_series(start_ms: int | None = None, end_ms: int | None = None) -> list[Series]:
    """BTCUSDT then ETHUSDT, as ``binance_series`` reads them."""
    return [binance_series(symbol, start_ms, end_ms) for symbol in SYMBOLS]


def training_config(model: str, train: str) -> str:
    """A ``tickcast-trainer train`` config on both symbols, 2023-04-19 .. 04-24: train to
    04-22, validate to 04-23, test on the last day, and plot an hour of ETHUSDT. ``model`` and
    ``train`` are the lines of its [model] and [train] tables beyond the batch size (256) and
    the samples an epoch (1024)."""
    return f"""
[data]
store = "history"
symbols = ["binance:BTCUSDT", "binance:ETHUSDT"]
start = "2023-04-19T00:00:00Z"
end = "2023-04-24T00:00:00Z"

[[data.import]]
exchange = "binance"
symbol = "BTCUSDT"
path = "{minutes_file("BTCUSDT")}"

[[data.import]]
exchange = "binance"
symbol = "ETHUSDT"
path = "{minutes_file("ETHUSDT")}"

[split]
train_end = "2023-04-22T00:00:00Z"
val_end = "2023-04-23T00:00:00Z"

[model]
{model}

[train]
batch_size = 256
samples_per_epoch = 1024
{train}

[report]
plot_series = "binance:ETHUSDT"
plot_hours = 1
"""


def exported(model: QuantileLSTM, trained: dict[str, Any]) -> bytes:
    """``model`` as an ONNX artifact with the contract metadata of its own config."""
    raw = export_onnx(model)
    return attach_metadata(raw, model_spec(model.config, make_version(raw), trained, {}))
