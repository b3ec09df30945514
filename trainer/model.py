"""The quantile LSTM, with all preprocessing inside the graph (docs/contracts.md).

Input: raw OHLCV ``[batch, window, 5]`` float32 and, under contract 2, ``bar_time`` ``[batch]``
int64 (epoch seconds of each row's last bar). Output: close-price quantiles
``[batch, horizon, n_quantiles]``. Nothing is fitted outside the module, so the exported ONNX
graph is the whole forecaster and training and serving cannot drift apart.

Why it is shaped like this:

* Prices are made scale-free as logs of ratios to the last close (computed as a ratio first,
  then the log, which keeps float32 precision at 0.001 bp even for prices near 100,000), so a
  model trained on BTC at 28,000 works on ETH at 1,800 and on BTC at 110,000.
* The window's own volatility ``sigma`` (close-to-close and Parkinson high/low, blended)
  normalises every feature and scales every output: the network predicts quantiles in units of
  ``sigma * sqrt(h)``. Untrained (zero head) it is already a Gaussian band around "no change",
  so training only has to learn corrections: fat tails, volatility clustering, volume surges.
* The median is "no change" plus a bounded shift (at most ``median_shift`` sigma-units), because
  at minute scale nothing reliably beats persistence on point error; the value is in the band.
* Quantiles cannot cross: outer levels are the median plus or minus cumulative softplus steps.
* Flat windows (no trades, volume 0) are finite: ``sigma`` has a floor and volume is divided by
  a clamped mean.

Contract 2 (``ModelConfig.contract = 2``) adds what minute-scale volatility is known to depend
on, at almost no inference cost:

* The clock: minute of the hour, hour of the day and day of the week of the last bar, computed
  in the graph from ``bar_time`` with integer ops (exact, UTC, no DST) and one-hot encoded
  (60 + 24 + 7 inputs to the dense layer), so the head can learn the bursts at :00, :15, :30,
  :45 and the hours of the week, per horizon.
* A longer past, cheaply: the LSTM reads only the newest ``lstm_steps`` bars (60 by default) of
  a window of up to 240, and HAR-style summaries of the whole window (Corsi 2009) join the
  context: realised variance over the newest 5/15/60/240 bars against ``sigma``, and the
  return over each of those spans in units of ``sigma * sqrt(n)``.
* ``sigma`` (the output scale) and the sequence features are those of the LSTM's bars, so an
  untrained contract-2 model is the same Gaussian band as a contract-1 one on those bars.
* Forecast log returns are clamped to +-1 (``MAX_LOG_RETURN``), so prices stay finite for any
  finite input, however far out of the training range; clamped levels tie, never cross.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from streamer.core.contracts.model import DEFAULT_LEVELS_V2

N_SEQ_FEATURES = 7
EWMA_LAMBDAS = (0.8, 0.94)
N_CTX_FEATURES = 6 + 2 * len(EWMA_LAMBDAS)
SIGMA_FLOOR = 1e-5  # 0.1 bp per bar: below any real market's minute volatility
_LOG_SIGMA_CENTRE = 7.0  # log(sigma) of a typical crypto minute is about -7 (9 bp)
_LN2X4 = 4.0 * math.log(2.0)

# contract 2: calendar features of bar_time (epoch seconds, UTC)
CONTRACTS = (1, 2)
WEEK_S = 7 * 86_400
MONDAY_SHIFT_S = 3 * 86_400  # 1970-01-01 was a Thursday: +3 days puts Monday 00:00 at 0
N_TIME_FEATURES = 60 + 24 + 7  # one-hot minute of hour, hour of day, day of week (Monday 0)
DEFAULT_LSTM_STEPS = 60
DEFAULT_HAR_WINDOWS = (5, 15, 60, 240)
MAX_WINDOW = 240  # what the streamer keeps in memory per symbol by default
MAX_LOG_RETURN = 1.0  # contract 2 forecasts no move beyond a factor e within the horizon


@dataclass(frozen=True, slots=True)
class ModelConfig:
    window: int = 60
    horizon: int = 15
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    hidden: int = 48
    layers: int = 1
    dropout: float = 0.0
    # largest median shift in units of sigma*sqrt(h); 0 pins the median to the last close
    median_shift: float = 0.1
    # the artifact contract: 1 (bars only) or 2 (bars and bar_time; the fields below)
    contract: int = 1
    # contract 2: bars the LSTM reads, the newest of the window (0: all of them)
    lstm_steps: int = 0
    # contract 2: realised-variance spans (bars) summarised over the window, each <= window
    har_windows: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.window < 16:
            raise ValueError(f"model.window={self.window}: at least 16 bars are needed")
        if self.horizon < 1:
            raise ValueError(f"model.horizon={self.horizon} must be positive")
        qs = list(self.quantiles)
        if qs != sorted(set(qs)) or 0.5 not in qs or not all(0 < q < 1 for q in qs):
            raise ValueError(f"model.quantiles={qs}: strictly increasing levels in (0,1) with 0.5")
        if self.hidden < 1 or self.layers < 1 or not 0 <= self.dropout < 1:
            raise ValueError("model.hidden and model.layers must be positive, dropout in [0, 1)")
        if self.median_shift < 0:
            raise ValueError(f"model.median_shift={self.median_shift} must be >= 0")
        if self.contract not in CONTRACTS:
            raise ValueError(f"model.contract={self.contract}: 1 or 2")
        if self.contract == 1 and (self.lstm_steps or self.har_windows):
            raise ValueError("model.lstm_steps and model.har_windows need model.contract = 2")
        if self.contract == 2:
            if self.window > MAX_WINDOW:
                raise ValueError(
                    f"model.window={self.window}: at most {MAX_WINDOW}, the bars the streamer "
                    "keeps in memory"
                )
            if not 16 <= self.steps <= self.window:
                raise ValueError(
                    f"model.lstm_steps={self.lstm_steps}: 16 to window ({self.window}), or 0"
                )
            spans = list(self.har_windows)
            if spans != sorted(set(spans)) or not all(2 <= n <= self.window for n in spans):
                raise ValueError(
                    f"model.har_windows={spans}: increasing spans from 2 to window ({self.window})"
                )

    @property
    def steps(self) -> int:
        """Bars the LSTM reads: the newest ``lstm_steps`` (contract 2), else the window."""
        return self.lstm_steps or self.window

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["quantiles"] = list(self.quantiles)
        if self.contract == 1:  # contract-1 runs describe themselves as before
            for key in ("contract", "lstm_steps", "har_windows"):
                del out[key]
        else:
            out["har_windows"] = list(self.har_windows)
        return out


def contract_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of a ``[model]`` table with its contract's defaults filled in where absent:
    contract 2 takes the 240 bars the streamer keeps, trains at seven levels, runs the LSTM
    over the newest 60 bars and summarises realised variance over the HAR spans that fit."""
    out = dict(fields)
    if out.get("contract", 1) != 2:
        return out
    out.setdefault("window", MAX_WINDOW)
    out.setdefault("quantiles", DEFAULT_LEVELS_V2)
    out.setdefault("lstm_steps", min(DEFAULT_LSTM_STEPS, out["window"]))
    out.setdefault("har_windows", tuple(n for n in DEFAULT_HAR_WINDOWS if n <= out["window"]))
    return out


def calendar(bar_time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minute of the hour, hour of the day and day of the week (Monday 0) of epoch seconds,
    UTC, in int64 (exact for any time; float32 would round epoch seconds to 2 minutes)."""
    into_week = torch.remainder(bar_time + MONDAY_SHIFT_S, WEEK_S)  # >= 0, even before 1970
    # of a non-negative number, truncation is the floor, and exports as one Div (floor
    # division takes nine ONNX ops, each a kernel call)
    minute = torch.remainder(torch.div(into_week, 60, rounding_mode="trunc"), 60)
    hour = torch.remainder(torch.div(into_week, 3600, rounding_mode="trunc"), 24)
    day = torch.div(into_week, 86_400, rounding_mode="trunc")
    return minute, hour, day


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class QuantileLSTM(nn.Module):
    """LSTM over normalised bar features, with a direct multi-horizon quantile head."""

    sqrt_h: torch.Tensor
    ewma_weights: torch.Tensor
    lower_sum: torch.Tensor
    upper_sum: torch.Tensor
    minute_codes: torch.Tensor
    hour_codes: torch.Tensor
    day_codes: torch.Tensor
    har_cc: torch.Tensor
    har_pk: torch.Tensor
    har_start: torch.Tensor
    har_sqrt_n: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        q = list(config.quantiles)
        self.n_q = len(q)
        self.median_index = q.index(0.5)
        m = self.median_index
        h = config.horizon
        self.register_buffer(
            "sqrt_h", torch.sqrt(torch.arange(1, h + 1, dtype=torch.float32)), persistent=False
        )
        # cumulative-sum matrices: lower[j] = med - sum_{i>=j} d_i, upper[k] = med + sum_{i<=k} d_i
        self.register_buffer(
            "lower_sum", torch.tril(torch.ones(m, m)).contiguous(), persistent=False
        )
        n_up = self.n_q - m - 1
        self.register_buffer(
            "upper_sum", torch.triu(torch.ones(n_up, n_up)).contiguous(), persistent=False
        )
        # normalised exponential weights over the LSTM's bars (newest heaviest), one row per
        # lambda: the EWMA variance estimators the baseline uses, available to the network
        age = torch.arange(config.steps - 1, -1, -1, dtype=torch.float64)
        weights = torch.stack(
            [torch.pow(torch.tensor(lam, dtype=torch.float64), age) for lam in EWMA_LAMBDAS]
        )
        weights[:, 0] = 0.0  # the first bar has no return
        weights = weights / weights.sum(dim=1, keepdim=True)
        self.register_buffer("ewma_weights", weights.T.float().contiguous(), persistent=False)
        z = [NormalDist().inv_cdf(level) for level in q]
        base = torch.zeros(h, self.n_q)
        for j in range(m):
            base[:, j] = _inverse_softplus(z[j + 1] - z[j])
        for k in range(m + 1, self.n_q):
            base[:, k] = _inverse_softplus(z[k] - z[k - 1])
        self.base = nn.Parameter(base)
        self.lstm = nn.LSTM(
            N_SEQ_FEATURES,
            config.hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        n_ctx = N_CTX_FEATURES
        if config.contract == 2:
            n_ctx += 2 * len(config.har_windows) + 1 + N_TIME_FEATURES
            for name, n in (("minute_codes", 60), ("hour_codes", 24), ("day_codes", 7)):
                self.register_buffer(name, torch.arange(n, dtype=torch.int64), persistent=False)
            self._register_har(config)
        self.hidden_layer = nn.Linear(config.hidden + n_ctx, config.hidden)
        self.out_layer = nn.Linear(config.hidden, h * self.n_q)
        nn.init.zeros_(self.out_layer.weight)
        nn.init.zeros_(self.out_layer.bias)

    def _register_har(self, config: ModelConfig) -> None:
        """Constant weights that turn the HAR summaries into two matmuls and one gather: per
        span, the mean of the newest returns and high/low ranges, and where it starts."""
        w, spans = config.window, config.har_windows
        cc = torch.zeros(w - 1, len(spans))
        pk = torch.zeros(w, len(spans))
        for j, n in enumerate(spans):
            returns = min(n, w - 1)  # n bars hold n returns when a bar precedes them
            cc[-returns:, j] = 1.0 / returns
            pk[-n:, j] = 1.0 / (n * _LN2X4)
        start = torch.tensor([w - n for n in spans], dtype=torch.int64)
        sqrt_n = torch.sqrt(torch.tensor(spans, dtype=torch.float32))
        for name, value in (("har_cc", cc), ("har_pk", pk), ("har_start", start)):
            self.register_buffer(name, value.contiguous(), persistent=False)
        self.register_buffer("har_sqrt_n", sqrt_n, persistent=False)

    def features(self, bars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scale-free sequence features, context features and the window's sigma.

        ``bars`` are the LSTM's bars: the whole window under contract 1, its newest
        ``lstm_steps`` under contract 2."""
        window = self.config.steps  # a Python int: the traced graph keeps it constant
        prices = bars[:, :, 0:4].clamp_min(1e-12)
        volume = bars[:, :, 4].clamp_min(0.0)
        last = prices[:, -1:, 3:4]
        rel = torch.log(prices / last)  # [B, W, 4] log o/h/l/c relative to the last close
        o, h, lo, c = rel[:, :, 0], rel[:, :, 1], rel[:, :, 2], rel[:, :, 3]
        r = F.pad(c[:, 1:] - c[:, :-1], (1, 0))  # 1-bar log returns, first one 0
        hl = (h - lo).clamp_min(0.0)
        top = torch.maximum(o, c)
        bottom = torch.minimum(o, c)
        var_cc = (r * r).sum(dim=1) / (window - 1)
        var_pk = (hl * hl).mean(dim=1) / _LN2X4
        sigma = torch.sqrt(0.5 * (var_cc + var_pk) + SIGMA_FLOOR**2)  # [B]
        s = sigma[:, None]
        vol_mean = volume.mean(dim=1, keepdim=True).clamp_min(1e-12)
        vol_rel = torch.log1p(volume / vol_mean)
        seq = torch.stack(
            [
                r / s,
                (c - o) / s,
                (h - top) / s,
                (bottom - lo) / s,
                hl / s,
                c / (s * math.sqrt(window)),
                vol_rel,
            ],
            dim=-1,
        ).clamp(-20.0, 20.0)

        def recent_sigma(n: int) -> torch.Tensor:
            v = 0.5 * ((r[:, -n:] ** 2).mean(dim=1) + (hl[:, -n:] ** 2).mean(dim=1) / _LN2X4)
            return torch.sqrt(v + SIGMA_FLOOR**2)

        var = sigma * sigma
        ewma_cc = torch.matmul(r * r, self.ewma_weights) + SIGMA_FLOOR**2  # [B, n_lambdas]
        ewma_pk = torch.matmul(hl * hl, self.ewma_weights) / _LN2X4 + SIGMA_FLOOR**2
        ewma_ctx = 0.5 * torch.log(torch.cat([ewma_cc, ewma_pk], dim=-1) / var[:, None])
        ctx = torch.stack(
            [
                torch.log(sigma) + _LOG_SIGMA_CENTRE,
                torch.log(recent_sigma(5) / sigma),
                torch.log(recent_sigma(15) / sigma),
                torch.sqrt(var_cc + SIGMA_FLOOR**2).log()
                - torch.sqrt(var_pk + SIGMA_FLOOR**2).log(),
                vol_rel[:, -5:].mean(dim=1) - vol_rel.mean(dim=1),
                c[:, 0] / (s[:, 0] * math.sqrt(window)),
            ],
            dim=-1,
        )
        ctx = torch.cat([ctx, ewma_ctx], dim=-1).clamp(-20.0, 20.0)
        return seq, ctx, sigma

    def time_features(self, bar_time: torch.Tensor) -> torch.Tensor:
        """One-hot minute of hour, hour of day and day of week of ``bar_time``: ``[B, 91]``."""
        minute, hour, day = calendar(bar_time)
        return torch.cat(
            [
                (minute[:, None] == self.minute_codes[None, :]).float(),
                (hour[:, None] == self.hour_codes[None, :]).float(),
                (day[:, None] == self.day_codes[None, :]).float(),
            ],
            dim=-1,
        )

    def har_features(self, bars: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """HAR-style summaries of the whole window: per span ``n``, half the log of realised
        variance over the newest ``n`` bars against ``sigma**2``, and the return over the span
        in units of ``sigma * sqrt(n)``; then the log volume of the LSTM's bars against the
        window's. ``[B, 2 * len(har_windows) + 1]``."""
        cfg = self.config
        # The window is 4x the LSTM's bars, so this is written for onnxruntime: the columns
        # come from one Split (picking each by index, a Gather, took 8 of 50 ms per 1,000
        # rows), each ratio takes one log, and all spans are summed in one matmul, which also
        # keeps the graph small for one-row calls. Contract 2 costs about 10 % more than 1.
        cols = bars.transpose(1, 2)  # [B, 5, window]
        _, high, low, close, volume = cols.unbind(1)
        close = close.clamp_min(1e-12)
        r2 = torch.log(close[:, 1:] / close[:, :-1]) ** 2  # [B, window - 1]
        hl = high.clamp_min(1e-12) / low.clamp_min(1e-12)
        hl2 = torch.log(hl.clamp_min(1.0)) ** 2
        rv = 0.5 * (torch.matmul(r2, self.har_cc) + torch.matmul(hl2, self.har_pk))  # [B, S]
        logs = 0.5 * torch.log((rv + SIGMA_FLOOR**2) / (sigma * sigma)[:, None])
        spans = torch.log(close[:, -1:] / close[:, self.har_start])  # return over each span
        moves = spans / (sigma[:, None] * self.har_sqrt_n[None, :])
        volume = volume.clamp_min(0.0)
        vol_all = volume.mean(dim=1).clamp_min(1e-12)
        vol_tail = volume[:, -cfg.steps :].mean(dim=1).clamp_min(1e-12)
        out = torch.cat([logs, moves, torch.log(vol_tail / vol_all)[:, None]], dim=-1)
        return out.clamp(-20.0, 20.0)

    def forward_returns(
        self, bars: torch.Tensor, bar_time: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Quantiles of ``log(close[t+h] / close[t])``: ``[B, horizon, n_quantiles]``.

        ``bar_time`` (int64 epoch seconds of each row's last bar) is contract 2's and required
        by it."""
        if self.config.contract == 2:
            if bar_time is None:
                raise ValueError("a contract-2 model needs bar_time")
            seq, ctx, sigma = self.features(bars[:, -self.config.steps :, :])
            har = self.har_features(bars, sigma)
            ctx = torch.cat([ctx, har, self.time_features(bar_time)], dim=-1)
        else:
            seq, ctx, sigma = self.features(bars)
        out, _ = self.lstm(seq)
        hidden = torch.relu(self.hidden_layer(torch.cat([out[:, -1, :], ctx], dim=-1)))
        a = self.out_layer(hidden).view(-1, self.config.horizon, self.n_q) + self.base
        m = self.median_index
        med = self.config.median_shift * torch.tanh(a[:, :, m : m + 1])  # [B, H, 1]
        parts = []
        if m > 0:
            parts.append(med - torch.matmul(F.softplus(a[:, :, :m]), self.lower_sum))
        parts.append(med)
        if m < self.n_q - 1:
            parts.append(med + torch.matmul(F.softplus(a[:, :, m + 1 :]), self.upper_sum))
        z = torch.cat(parts, dim=-1)
        scale = sigma[:, None, None] * self.sqrt_h[None, :, None]
        if self.config.contract == 2:  # finite prices for any finite input; ties never cross
            return (z * scale).clamp(-MAX_LOG_RETURN, MAX_LOG_RETURN)
        return z * scale

    def forward(self, bars: torch.Tensor, bar_time: torch.Tensor | None = None) -> torch.Tensor:
        """Close-price quantiles ``[B, horizon, n_quantiles]`` (the exported graph)."""
        last_close = bars[:, -1:, 3:4].clamp_min(1e-12)  # [B, 1, 1]
        return last_close * torch.exp(self.forward_returns(bars, bar_time))


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss; ``pred`` [B, H, Q], ``target`` [B, H], ``levels`` [Q]."""
    diff = target[:, :, None] - pred
    return torch.maximum(levels * diff, (levels - 1.0) * diff).mean()
