"""The quantile LSTM, with all preprocessing inside the graph (DESIGN.md section 3.1).

Input: raw OHLCV ``[batch, window, 5]`` float32. Output: close-price quantiles
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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

N_SEQ_FEATURES = 7
EWMA_LAMBDAS = (0.8, 0.94)
N_CTX_FEATURES = 6 + 2 * len(EWMA_LAMBDAS)
SIGMA_FLOOR = 1e-5  # 0.1 bp per bar: below any real market's minute volatility
_LOG_SIGMA_CENTRE = 7.0  # log(sigma) of a typical crypto minute is about -7 (9 bp)
_LN2X4 = 4.0 * math.log(2.0)


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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["quantiles"] = list(self.quantiles)
        return out


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class QuantileLSTM(nn.Module):
    """LSTM over normalised bar features, with a direct multi-horizon quantile head."""

    sqrt_h: torch.Tensor
    ewma_weights: torch.Tensor
    lower_sum: torch.Tensor
    upper_sum: torch.Tensor

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
        # normalised exponential weights over the window (newest bar heaviest), one row per
        # lambda: the EWMA variance estimators the baseline uses, available to the network
        age = torch.arange(config.window - 1, -1, -1, dtype=torch.float64)
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
        self.hidden_layer = nn.Linear(config.hidden + N_CTX_FEATURES, config.hidden)
        self.out_layer = nn.Linear(config.hidden, h * self.n_q)
        nn.init.zeros_(self.out_layer.weight)
        nn.init.zeros_(self.out_layer.bias)

    def features(self, bars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scale-free sequence features, context features and the window's sigma."""
        window = self.config.window  # a Python int: the traced graph keeps it constant
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

    def forward_returns(self, bars: torch.Tensor) -> torch.Tensor:
        """Quantiles of ``log(close[t+h] / close[t])``: ``[B, horizon, n_quantiles]``."""
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
        return z * scale

    def forward(self, bars: torch.Tensor) -> torch.Tensor:
        """Close-price quantiles ``[B, horizon, n_quantiles]`` (the exported graph)."""
        last_close = bars[:, -1:, 3:4].clamp_min(1e-12)  # [B, 1, 1]
        return last_close * torch.exp(self.forward_returns(bars))


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss; ``pred`` [B, H, Q], ``target`` [B, H], ``levels`` [Q]."""
    diff = target[:, :, None] - pred
    return torch.maximum(levels * diff, (levels - 1.0) * diff).mean()
