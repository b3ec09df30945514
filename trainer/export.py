"""ONNX export under contract 1, and the parity check that guards every publish.

The legacy TorchScript exporter (``dynamo=False``, opset 17, dynamic batch axis) writes one
self-contained file with native ``LSTM`` ops; the check below refuses anything else (an external
weights file, a missing dynamic batch axis, an opset below the contract's). Parity: onnxruntime
must reproduce PyTorch to 1e-4 relative at batch sizes 1, 7 and 1000 on real windows, plus a
flat zero-volume window that must come out finite. A failed check raises ``ExportError`` and
nothing is published.
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

from streamer.core import contract
from trainer.model import QuantileLSTM

OPSET = 17
PARITY_BATCHES = (1, 7, 1000)
PARITY_RTOL = 1e-4


class ExportError(RuntimeError):
    """The exported graph is not a publishable contract-1 artifact; the message says why."""


def export_onnx(model: QuantileLSTM) -> bytes:
    """The graph without metadata (the metrics that go into it need this graph to be scored)."""
    model.eval()
    cfg = model.config
    example = torch.full((2, cfg.window, 5), 100.0, dtype=torch.float32)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            buffer,  # type: ignore[arg-type]  # the legacy exporter writes to file objects
            input_names=[contract.INPUT_NAME],
            output_names=[contract.OUTPUT_NAME],
            dynamic_axes={contract.INPUT_NAME: {0: "batch"}, contract.OUTPUT_NAME: {0: "batch"}},
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


def attach_metadata(model_bytes: bytes, spec: contract.ModelSpec, check: bool = True) -> bytes:
    """Write the contract metadata into the graph, validated by the contract's own parser.

    ``check=False`` is for models of other intervals (daily bars): trained and scored with the
    same code, but contract 1 serves 1-minute models only, so they are never published.
    """
    meta = spec.to_metadata()
    if check:
        contract.parse_metadata(meta)
    proto = onnx.load_model_from_string(model_bytes)
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value
    proto.producer_name = "tickcast-trainer"
    proto.doc_string = "tickcast quantile LSTM, contract 1 (see tickcast.* metadata)"
    return bytes(proto.SerializeToString())


def make_version(model_bytes: bytes, now: datetime | None = None) -> str:
    """``20230501T210100Z-1a2b3c4d``: sortable by time, unique by the weights' hash."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{hashlib.sha256(model_bytes).hexdigest()[:8]}"


def flat_window(window: int, price: float = 27_000.0) -> npt.NDArray[np.float32]:
    """Minutes without trades as the streamer emits them: o=h=l=c, volume 0."""
    bars = np.zeros((1, window, 5), dtype=np.float32)
    bars[:, :, :4] = price
    return bars


def check_parity(
    model: QuantileLSTM,
    model_bytes: bytes,
    real_windows: npt.NDArray[np.float32],
    batches: tuple[int, ...] = PARITY_BATCHES,
    rtol: float = PARITY_RTOL,
) -> dict[str, Any]:
    """onnxruntime against PyTorch on real windows; raises ExportError on any mismatch."""
    if real_windows.shape[0] < max(batches):
        raise ExportError(f"parity needs {max(batches)} real windows, got {real_windows.shape[0]}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )
    model.eval()
    report: dict[str, Any] = {"rtol": rtol, "batches": {}}
    cases = [(str(b), np.ascontiguousarray(real_windows[:b])) for b in batches]
    cases.append(("flat_zero_volume", flat_window(model.config.window)))
    for name, x in cases:
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: x})[0]
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
