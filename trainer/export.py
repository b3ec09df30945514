"""ONNX export under contract 1 or 2, and the parity check that guards every publish.

The legacy TorchScript exporter (``dynamo=False``, opset 17, dynamic batch axis) writes one
self-contained file with native ``LSTM`` ops; the check below refuses anything else (an external
weights file, a missing dynamic batch axis, an opset below the contract's). Parity: onnxruntime
must reproduce PyTorch to 1e-4 relative at batch sizes 1, 7 and 1000 on real windows, plus a
flat zero-volume window that must come out finite; a contract-2 model is fed the real windows'
own bar times, and the first windows again at the calendar's edges (``EDGE_TIMES_S``). A failed
check raises ``ExportError`` and nothing is published.
"""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch

from streamer.core.contracts import model as contract
from trainer.model import ModelConfig, QuantileLSTM

OPSET = 17
PARITY_BATCHES = (1, 7, 1000)
PARITY_RTOL = 1e-4
# bar times a contract-2 export is also checked at: minute 0 and 59, hour 0 and 23, Sunday
# night into Monday, a leap day, a year's end, and the epoch itself
EDGE_TIMES_S = (
    1_704_067_200,  # 2024-01-01 00:00 UTC, Monday
    1_704_067_140,  # 2023-12-31 23:59, Sunday
    1_709_251_140,  # 2024-02-29 23:59, Thursday
    1_718_021_700,  # 2024-06-10 12:15, Monday
    1_735_689_540,  # 2024-12-31 23:59, Tuesday
    0,  # 1970-01-01 00:00, Thursday
)


class ExportError(RuntimeError):
    """The exported graph is not a publishable artifact; the message says why."""


def export_onnx(model: QuantileLSTM) -> bytes:
    """The graph without metadata (the metrics that go into it need this graph to be scored)."""
    model.eval()
    cfg = model.config
    example: tuple[torch.Tensor, ...] = (torch.full((2, cfg.window, 5), 100.0),)
    names = [contract.INPUT_NAME]
    if cfg.contract == 2:
        example += (torch.tensor(EDGE_TIMES_S[:2], dtype=torch.int64),)
        names.append(contract.TIME_INPUT_NAME)
    axes = {name: {0: "batch"} for name in (*names, contract.OUTPUT_NAME)}
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            example,
            buffer,  # type: ignore[arg-type]  # the legacy exporter writes to file objects
            input_names=names,
            output_names=[contract.OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    data = buffer.getvalue()
    check_self_contained(data)
    return data


def check_self_contained(model_bytes: bytes) -> None:
    """One file, a valid graph, opset >= 17, a symbolic batch axis on input and output."""
    proto = onnx.load_model_from_string(model_bytes)
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"initializer {tensor.name!r} lives in an external data file")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx checker: {exc}") from None
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < contract.MIN_OPSET:
        raise ExportError(f"opset {opset} < {contract.MIN_OPSET}")
    for value in (*proto.graph.input, *proto.graph.output):
        first = value.type.tensor_type.shape.dim[0]
        if not first.dim_param:
            raise ExportError(f"{value.name}: batch axis is fixed ({first.dim_value}), not dynamic")


def attach_metadata(model_bytes: bytes, spec: contract.ModelSpec) -> bytes:
    """Write the contract metadata into the graph, validated by the contract's own parser.

    Checked against the spec's own interval: a model of daily bars is trained, checked and
    scored with the same code (contract 1 serves 1-minute models only, so it is never published).
    """
    meta = spec.to_metadata()
    contract.parse_metadata(meta, interval_s=spec.interval_s)
    proto = onnx.load_model_from_string(model_bytes)
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value
    proto.producer_name = "tickcast-trainer"
    proto.doc_string = f"tickcast quantile LSTM, contract {spec.contract} (see tickcast.* metadata)"
    return bytes(proto.SerializeToString())


def model_spec(
    config: ModelConfig,
    version: str,
    trained: dict[str, Any],
    metrics: dict[str, Any],
    interval_s: int = contract.INTERVAL_S,
) -> contract.ModelSpec:
    """The contract metadata of a model built from ``config``: its window, horizon, quantile
    levels and contract, with what it was trained on and how it scored."""
    return contract.ModelSpec(
        window=config.window,
        horizon=config.horizon,
        interval_s=interval_s,
        quantiles=config.quantiles,
        version=version,
        trained=trained,
        metrics=metrics,
        contract=config.contract,
    )


def make_version(model_bytes: bytes, now: datetime | None = None) -> str:
    """``20230501T210100Z-1a2b3c4d``: sortable by time, unique by the weights' hash."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{hashlib.sha256(model_bytes).hexdigest()[:8]}"


def flat_window(window: int, price: float = 27_000.0) -> npt.NDArray[np.float32]:
    """Minutes without trades as the streamer emits them: o=h=l=c, volume 0."""
    bars = np.zeros((1, window, 5), dtype=np.float32)
    bars[:, :, :4] = price
    return bars


def _parity_cases(
    model: QuantileLSTM,
    real_windows: npt.NDArray[np.float32],
    bar_time_s: npt.NDArray[np.int64] | None,
    batches: tuple[int, ...],
) -> list[tuple[str, npt.NDArray[np.float32], npt.NDArray[np.int64] | None]]:
    window = model.config.window
    if model.config.contract == 1:
        cases = [(str(b), np.ascontiguousarray(real_windows[:b]), None) for b in batches]
        return [*cases, ("flat_zero_volume", flat_window(window), None)]
    if bar_time_s is None or bar_time_s.shape != (real_windows.shape[0],):
        raise ExportError("parity of a contract-2 model needs the bar time of every real window")
    edges = np.asarray(EDGE_TIMES_S, dtype=np.int64)
    times = [(str(b), bar_time_s[:b]) for b in batches]
    return [
        *((name, np.ascontiguousarray(real_windows[: len(t)]), t) for name, t in times),
        ("calendar_edges", np.ascontiguousarray(real_windows[: len(edges)]), edges),
        ("flat_zero_volume", flat_window(window), edges[:1]),
    ]


def check_parity(
    model: QuantileLSTM,
    model_bytes: bytes,
    real_windows: npt.NDArray[np.float32],
    batches: tuple[int, ...] = PARITY_BATCHES,
    rtol: float = PARITY_RTOL,
    bar_time_s: npt.NDArray[np.int64] | None = None,
) -> dict[str, Any]:
    """onnxruntime against PyTorch on real windows (and, for contract 2, their bar times);
    raises ExportError on any mismatch."""
    if real_windows.shape[0] < max(batches):
        raise ExportError(f"parity needs {max(batches)} real windows, got {real_windows.shape[0]}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )
    model.eval()
    report: dict[str, Any] = {"rtol": rtol, "batches": {}}
    for name, x, t in _parity_cases(model, real_windows, bar_time_s, batches):
        feed: dict[str, npt.NDArray[Any]] = {contract.INPUT_NAME: x}
        with torch.no_grad():
            if t is None:
                expected = model(torch.from_numpy(x)).numpy()
            else:
                expected = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
                feed[contract.TIME_INPUT_NAME] = t
        got = session.run([contract.OUTPUT_NAME], feed)[0]
        if got.shape != expected.shape:
            raise ExportError(
                f"batch {name}: onnxruntime shape {got.shape}, torch {expected.shape}"
            )
        if not np.isfinite(got).all():
            raise ExportError(f"batch {name}: onnxruntime output is not finite")
        if contract.bad_output_rows(got).any():
            raise ExportError(f"batch {name}: quantiles cross in the onnxruntime output")
        rel = np.abs(got.astype(np.float64) - expected) / np.maximum(np.abs(expected), 1e-30)
        last = x[:, -1, 3].astype(np.float64)[:, None, None]
        dev_bps = np.abs(got.astype(np.float64) - expected) / last * 1e4
        report["batches"][name] = {
            "max_rel_err": float(rel.max()),
            "max_abs_err_bps": float(dev_bps.max()),
        }
        if rel.max() > rtol:
            raise ExportError(
                f"batch {name}: onnxruntime differs from torch by {rel.max():.2e} relative "
                f"(limit {rtol:.0e})"
            )
    return report
