"""The onnxruntime session: load-time checks, smoke inference, and the inference worker.

The only module that imports onnxruntime. The streamer never imports torch: any artifact that
meets the contract (``streamer.core.contracts.model``) is served, whoever built it.

A candidate is checked before it serves, beside the model already serving: the sha256 from its
manifest, that onnxruntime can load it (a corrupt or truncated file cannot), the contract
(metadata, I/O names, shapes and types, in ``check_artifact``), and a smoke inference on real
recent windows whose outputs must be finite and non-crossing. A refusal is a ``ModelRejected``,
a ``Permanent`` failure: the same bytes will never pass.

Contract 1 and contract 2 models are served alike: ``run`` takes the bar time of every row and
feeds it to the models that declare a ``bar_time`` input (``model_inputs``).
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from streamer.core.contracts.model import (
    N_FEATURES,
    OUTPUT_NAME,
    ContractError,
    ModelSpec,
    bad_output_rows,
    check_artifact,
    declarations,
    model_inputs,
)
from streamer.core.retry import Permanent
from streamer.core.timefmt import parse_iso_ms_or_none

FloatArray = npt.NDArray[np.float32]
TimeArray = npt.NDArray[np.int64]
"""Open times of each row's last bar, epoch seconds (contract 2's ``bar_time``)."""
SmokeWindows = Callable[[int], FloatArray | None]
"""Given a window length, recent real windows ``[n, window, 5]`` (or None when there are none)."""

SMOKE_MAX_ROWS = 256
# Rows per onnxruntime call. The LSTM projects every step's input for all rows at once: for
# many rows that spills out of the CPU caches, and malloc keeps the freed buffers resident.
# 1,000 windows took 97 ms in one call and 47-54 ms in chunks of 64 to 250; after chunks of
# 250 the process held 28 MB more, after chunks of 64, 10 MB (this machine, default model).
CHUNK_ROWS = 64
SMOKE_FALLBACK_PRICE = 100.0  # flat bars (no trades, volume 0), used only with no real windows
# Bar times a contract-2 candidate is smoke-tested at, each on every window: the calendar's
# edges (minute 0 and 59, hour 0 and 23, Sunday night into Monday, a year's end, a leap day)
SMOKE_BAR_TIMES_S = (
    1_704_067_200,  # 2024-01-01 00:00 UTC, a Monday
    1_704_067_140,  # 2023-12-31 23:59, a Sunday
    1_709_164_740,  # 2024-02-28 23:59, the eve of a leap day
    1_709_251_140,  # 2024-02-29 23:59
    1_718_021_700,  # 2024-06-10 12:15, a Monday
    1_735_689_540,  # 2024-12-31 23:59
)

# reason labels of ModelRejected (and of reload_failures_total)
REASON_MISSING = "missing"  # the registry points at a version whose files/keys are absent
REASON_MANIFEST = "manifest"  # manifest unreadable or without sha256
REASON_SHA256 = "sha256"  # bytes do not match the manifest: corrupt or truncated copy
REASON_CORRUPT = "corrupt"  # onnxruntime cannot load the bytes
REASON_CONTRACT = "contract"  # metadata, names, shapes or types break the contract
REASON_SMOKE = "smoke"  # inference on real windows failed, or gave bad values


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class ModelRejected(Permanent):
    """A candidate model was refused; ``reason`` is a bounded metric label, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class NoModel(RuntimeError):
    """predict() was called while no model is loaded."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A checked onnxruntime session with what the contract and the registry say about it."""

    session: ort.InferenceSession
    spec: ModelSpec
    sha256: str
    loaded_at_ms: int
    trained_at: str  # ISO-8601 UTC from the metadata, else the manifest's created_at, else ""
    trained_at_ms: int | None
    source: str  # where it came from, for logs

    @property
    def version(self) -> str:
        return self.spec.version

    def run(self, batch: FloatArray, bar_time_s: TimeArray | None = None) -> FloatArray:
        """Blocking inference on ``[n, window, 5]``; call it from a worker thread.

        ``bar_time_s`` (``[n]``, epoch seconds of each row's last bar) is required by a
        contract-2 model and ignored by a contract-1 one."""
        feed = model_inputs(self.spec, batch, bar_time_s)  # checks shapes, wants times for v2
        if batch.shape[0] == 0:
            return np.empty((0, self.spec.horizon, len(self.spec.quantiles)), dtype=np.float32)
        outputs = []
        for start in range(0, batch.shape[0], CHUNK_ROWS):
            chunk = {name: value[start : start + CHUNK_ROWS] for name, value in feed.items()}
            (out,) = self.session.run([OUTPUT_NAME], chunk)
            outputs.append(np.asarray(out, dtype=np.float32))
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def age_s(self, now_ms: int) -> float | None:
        """Seconds since training, or None when the artifact does not say when."""
        return None if self.trained_at_ms is None else (now_ms - self.trained_at_ms) / 1000.0

    def stale(self, max_age_s: float | None, now_ms: int) -> bool:
        """True when older than ``max_age_s``; an unknown age is not stale (nothing to judge)."""
        age = self.age_s(now_ms)
        return max_age_s is not None and age is not None and age > max_age_s


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # one thread: the daemon has other work, and one call per minute with a batch of every
    # symbol is fast enough single-threaded (the trainer's benchmark: 1,000 series <= 150 ms)
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only; refusals are logged by us with the reason
    # no arena: a batch of 1,000 series grew onnxruntime's arena by about 120 MB that it kept
    # for good (bench/bench_memory.py); without it the memory goes back after each call
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    return options


def open_model(
    data: bytes,
    expected_sha256: str | None,
    *,
    created_at: str | None = None,
    source: str = "",
) -> LoadedModel:
    """Verify, load and contract-check ``data`` (no inference yet); raises ModelRejected."""
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256.strip().lower():
        raise ModelRejected(
            REASON_SHA256,
            f"sha256 of the {len(data)} bytes is {digest}, the manifest says "
            f"{expected_sha256} (corrupt or truncated copy)",
        )
    try:
        session = ort.InferenceSession(
            data, sess_options=_session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises several internal types (InvalidProtobuf, Fail)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelRejected(
            REASON_CORRUPT,
            f"onnxruntime cannot load the {len(data)} bytes (not ONNX, corrupt or truncated): "
            f"{first_line}",
        ) from None
    try:
        spec = check_artifact(
            dict(session.get_modelmeta().custom_metadata_map),
            declarations(session.get_inputs()),
            declarations(session.get_outputs()),
        )
    except ContractError as exc:
        raise ModelRejected(REASON_CONTRACT, f"contract violation: {exc}") from None
    trained_at = spec.trained_at or created_at or ""
    return LoadedModel(
        session=session,
        spec=spec,
        sha256=digest,
        loaded_at_ms=wall_ms(),
        trained_at=trained_at,
        trained_at_ms=parse_iso_ms_or_none(trained_at),
        source=source,
    )


def _flat_windows(window: int, rows: int = 2) -> FloatArray:
    bars = np.full((rows, window, N_FEATURES), SMOKE_FALLBACK_PRICE, dtype=np.float32)
    bars[:, :, 4] = 0.0  # minutes without trades, as the aggregator emits them
    return bars


def _smoke_times(batch: FloatArray) -> tuple[FloatArray, TimeArray]:
    """Every window at every time of ``SMOKE_BAR_TIMES_S`` (contract 2)."""
    times = np.asarray(SMOKE_BAR_TIMES_S, dtype=np.int64)
    return np.repeat(batch, len(times), axis=0), np.tile(times, batch.shape[0])


def smoke_check(model: LoadedModel, windows: FloatArray | None) -> None:
    """Run ``model`` on real windows; raise ModelRejected unless every output row is good.

    At least two rows go in, so a model exported with a fixed batch of one is caught here
    rather than at the first minute close. A contract-2 model sees every window at each of
    the calendar edges in ``SMOKE_BAR_TIMES_S``.
    """
    spec = model.spec
    if windows is None or windows.ndim != 3 or windows.shape[1:] != (spec.window, N_FEATURES):
        batch, what = _flat_windows(spec.window), "2 flat fallback windows"
    else:
        batch = np.asarray(windows[:SMOKE_MAX_ROWS], dtype=np.float32)
        if batch.shape[0] == 0:
            batch, what = _flat_windows(spec.window), "2 flat fallback windows"
        else:
            if batch.shape[0] == 1:
                batch = np.concatenate([batch, batch])
            what = f"{batch.shape[0]} real windows"
    times = None
    if spec.contract != 1:
        batch, times = _smoke_times(batch)
        what += f" at {len(SMOKE_BAR_TIMES_S)} bar times each"
    try:
        out = model.run(batch, times)
    except Exception as exc:  # whatever the graph raises, the model is unfit to serve
        raise ModelRejected(REASON_SMOKE, f"smoke inference on {what} failed: {exc}") from None
    expected = (batch.shape[0], spec.horizon, len(spec.quantiles))
    if out.shape != expected:
        raise ModelRejected(
            REASON_SMOKE,
            f"smoke inference on {what}: output shape {out.shape}, expected {expected}",
        )
    bad = bad_output_rows(out)
    if bad.any():
        raise ModelRejected(
            REASON_SMOKE,
            f"smoke inference on {what}: {int(bad.sum())} rows are not finite or have "
            "crossing quantiles",
        )


def load_model(
    data: bytes,
    expected_sha256: str | None = None,
    *,
    smoke_windows: SmokeWindows | None = None,
    created_at: str | None = None,
    source: str = "",
) -> LoadedModel:
    """Every check in one blocking call: sha256, load, contract, smoke inference."""
    model = open_model(data, expected_sha256, created_at=created_at, source=source)
    smoke_check(model, smoke_windows(model.spec.window) if smoke_windows else None)
    return model


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # glibc; not on musl
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _libc_malloc_trim()


def release_freed_memory() -> None:
    """Hand the heap pages a replaced or refused model freed back to the OS (glibc only).

    Without it each load left some fragmented heap resident: 40 swaps between two models grew
    the process by 4.6 MB, in steps; with a trim after each, it stayed flat (this machine)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _timed_run(
    model: LoadedModel, batch: FloatArray, bar_time_s: TimeArray | None
) -> tuple[FloatArray, float]:
    started = time.perf_counter()
    output = model.run(batch, bar_time_s)
    return output, time.perf_counter() - started


class ModelServer:
    """Holds the model that serves and runs inference on one dedicated worker thread.

    A forecast round should take ``current`` once, build its batch for that model's window and
    pass the same model to ``predict``: a swap in between then cannot mix two models.
    """

    def __init__(self, *, max_age_s: float | None = None) -> None:
        self.max_age_s = max_age_s
        self._current: LoadedModel | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tickcast-infer")
        self.swaps_total = 0

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Serve ``model`` from the next round on; returns the one it replaces."""
        old, self._current = self._current, model
        self.swaps_total += 1
        return old

    async def predict(
        self,
        batch: FloatArray,
        model: LoadedModel | None = None,
        bar_time_s: TimeArray | None = None,
    ) -> FloatArray:
        """``[n, horizon, n_quantiles]`` for ``batch``, computed off the event loop."""
        output, _ = await self.submit(batch, model, bar_time_s)
        return output

    def submit(
        self,
        batch: FloatArray,
        model: LoadedModel | None = None,
        bar_time_s: TimeArray | None = None,
    ) -> asyncio.Future[tuple[FloatArray, float]]:
        """Queue ``batch`` (and its rows' bar times, which contract 2 needs) on the worker
        thread now; the future gives the output and the seconds the thread spent on it
        (queueing excluded). Call from the event loop."""
        model = model or self._current
        if model is None:
            raise NoModel("no model is loaded")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, _timed_run, model, batch, bar_time_s)

    def stale(self, now_ms: int | None = None, model: LoadedModel | None = None) -> bool:
        model = model or self._current
        if model is None:
            return False
        return model.stale(self.max_age_s, wall_ms() if now_ms is None else now_ms)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
