"""Fitting: pooled mini-batches, pinball loss in basis points, early stopping on validation.

Reproducible by construction: one seed drives torch, the epoch samplers and the validation
subset, and training uses at most ``threads`` CPU threads (2 by default, the project's budget).
A contract-2 model is fed the bar time of each origin beside its window, as the streamer feeds
it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from trainer.dataset import Pool
from trainer.model import ModelConfig, QuantileLSTM, pinball_loss

BPS = 1e4


@dataclass(frozen=True, slots=True)
class TrainSettings:
    seed: int = 7
    batch_size: int = 512
    max_epochs: int = 20
    samples_per_epoch: int = 60_000  # 0: every training origin each epoch
    val_samples: int = 20_000  # fixed validation subset; 0: all
    lr: float = 2e-3
    weight_decay: float = 0.0
    patience: int = 3
    threads: int = 2
    max_steps: int = 0  # 0: no limit (tests use a handful)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError("train.batch_size, max_epochs and patience must be positive")
        if not 1 <= self.threads <= 2:
            raise ValueError(f"train.threads={self.threads}: the trainer may use 1 or 2 threads")
        if self.lr <= 0:
            raise ValueError(f"train.lr={self.lr} must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    model: QuantileLSTM
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    stopped: str
    seconds: float


def seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)


def batch_inputs(
    config: ModelConfig, pool: Pool, rows: np.ndarray
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Model inputs (``bars``, plus ``bar_time`` for contract 2) and targets in bp of rows."""
    x, y = pool.batch(rows, config.window, config.horizon)
    inputs = [torch.from_numpy(x)]
    if config.contract == 2:
        inputs.append(torch.from_numpy(pool.bar_time_s(rows)))
    return inputs, torch.from_numpy((y * BPS).astype(np.float32))


def evaluate_loss(
    model: QuantileLSTM, pool: Pool, rows: np.ndarray, batch_size: int = 4096
) -> float:
    """Mean pinball loss in bps over ``rows`` of ``pool``."""
    cfg = model.config
    levels = torch.tensor(cfg.quantiles, dtype=torch.float32)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            chunk = rows[start : start + batch_size]
            inputs, target = batch_inputs(cfg, pool, chunk)
            pred = model.forward_returns(*inputs) * BPS
            loss = pinball_loss(pred, target, levels)
            total += float(loss) * chunk.shape[0]
            count += chunk.shape[0]
    return total / max(count, 1)


def fit(
    config: ModelConfig,
    settings: TrainSettings,
    train: Pool,
    val: Pool,
    log: Callable[[str], None] = print,
) -> FitResult:
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"no samples to fit on: train={len(train)} val={len(val)} origins")
    seed_everything(settings.seed, settings.threads)
    rng = np.random.default_rng(settings.seed)
    model = QuantileLSTM(config)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    levels = torch.tensor(config.quantiles, dtype=torch.float32)
    val_rows = np.arange(len(val), dtype=np.int64)
    if 0 < settings.val_samples < len(val):
        val_rows = np.sort(rng.choice(len(val), settings.val_samples, replace=False))
    per_epoch = len(train) if settings.samples_per_epoch <= 0 else settings.samples_per_epoch
    per_epoch = min(per_epoch, len(train))
    steps_per_epoch = max(1, per_epoch // settings.batch_size)
    total_steps = steps_per_epoch * settings.max_epochs
    if settings.max_steps:
        total_steps = min(total_steps, settings.max_steps)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=settings.lr, total_steps=total_steps, pct_start=0.15
    )
    history: list[dict[str, float]] = []
    best_state = copy.deepcopy(model.state_dict())
    best_val = evaluate_loss(model, val, val_rows)
    best_epoch = 0
    history.append({"epoch": 0, "train_loss": float("nan"), "val_loss": best_val, "seconds": 0.0})
    log(f"epoch 0 (untrained Gaussian band): val pinball {best_val:.4f} bp")
    started = time.monotonic()
    step = 0
    stopped = "max_epochs"
    for epoch in range(1, settings.max_epochs + 1):
        model.train()
        order = rng.permutation(len(train))[: steps_per_epoch * settings.batch_size]
        running, seen = 0.0, 0
        for b in range(steps_per_epoch):
            if step >= total_steps:
                break
            rows = order[b * settings.batch_size : (b + 1) * settings.batch_size]
            inputs, target = batch_inputs(config, train, rows)
            pred = model.forward_returns(*inputs) * BPS
            loss = pinball_loss(pred, target, levels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            scheduler.step()
            step += 1
            running += loss.item() * rows.shape[0]
            seen += rows.shape[0]
        val_loss = evaluate_loss(model, val, val_rows)
        elapsed = time.monotonic() - started
        history.append(
            {
                "epoch": epoch,
                "train_loss": running / max(seen, 1),
                "val_loss": val_loss,
                "seconds": elapsed,
            }
        )
        log(
            f"epoch {epoch}: train {running / max(seen, 1):.4f} bp, val {val_loss:.4f} bp, "
            f"{elapsed:.0f}s"
        )
        if val_loss < best_val:
            best_val, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= settings.patience:
            stopped = "early_stopping"
            break
        if step >= total_steps:
            stopped = "max_steps" if settings.max_steps else "max_epochs"
            break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        best_val_loss=best_val,
        stopped=stopped,
        seconds=time.monotonic() - started,
    )
