"""Model serving: the onnxruntime session, contract checks, registry watching and hot reload.

The only module that imports onnxruntime. The streamer never imports torch: any artifact that
meets the contract (DESIGN.md section 3.1) is served, whoever built it.

A candidate model is checked before it serves, beside the model already serving: the sha256
from its manifest, that onnxruntime can load it (a corrupt or truncated file cannot), the
contract (metadata, I/O names, shapes and types), and a smoke inference on real recent windows
whose outputs must be finite and non-crossing. Only then is the server's reference swapped. A
forecast round takes the model reference once and uses it throughout, so a swap lands between
two rounds: no minute is skipped or forecast twice. A refused candidate is counted by reason,
logged, and not tried again until the registry's current version changes (or ``retry_failed_s``
passes); the old model keeps serving.

Registries (written by the trainer, read here):

directory
    ``<root>/versions/<version>/model.onnx`` and ``manifest.json`` (``version``, ``sha256`` hex
    of model.onnx, ``created_at``), and ``<root>/current``: ``{"version": "..."}``, replaced
    atomically.
Redis
    ``tickcast:models:{version}:onnx`` (bytes), ``tickcast:models:{version}:manifest`` (JSON),
    ``tickcast:models:current`` (the version string), the sorted set
    ``tickcast:models:versions``, and a PUBLISH on ``tickcast:models:events`` when current
    changes. The watcher listens there for fast reloads and polls as well, since pub/sub
    messages are lost while a connection is down.
single file
    A plain ``.onnx`` path (the demo's default model); no manifest, so no sha256 check. A file
    caught mid-write fails to load and is tried again once its size or mtime changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamer.core.backoff import Backoff
from streamer.core.contract import (
    INPUT_NAME,
    N_FEATURES,
    OUTPUT_NAME,
    ContractError,
    ModelSpec,
    bad_output_rows,
    check_io_shapes,
    parse_metadata,
)
from streamer.io.store import redact_url

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
SmokeWindows = Callable[[int], FloatArray | None]
"""Given a window length, recent real windows ``[n, window, 5]`` (or None when there are none)."""

SMOKE_MAX_ROWS = 256
# Rows per onnxruntime call. The LSTM projects every step's input for all rows at once: for
# many rows that spills out of the CPU caches, and malloc keeps the freed buffers resident.
# 1,000 windows took 97 ms in one call and 47-54 ms in chunks of 64 to 250; after chunks of
# 250 the process held 28 MB more, after chunks of 64, 10 MB (this machine, default model).
CHUNK_ROWS = 64
SMOKE_FALLBACK_PRICE = 100.0  # flat bars (no trades, volume 0), used only with no real windows

CURRENT_KEY = "tickcast:models:current"
VERSIONS_KEY = "tickcast:models:versions"
EVENTS_CHANNEL = "tickcast:models:events"
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")

# reason labels of ModelRejected (and of reload_failures_total)
REASON_MISSING = "missing"  # the registry points at a version whose files/keys are absent
REASON_MANIFEST = "manifest"  # manifest unreadable or without sha256
REASON_SHA256 = "sha256"  # bytes do not match the manifest: corrupt or truncated copy
REASON_CORRUPT = "corrupt"  # onnxruntime cannot load the bytes
REASON_CONTRACT = "contract"  # metadata, names, shapes or types break the contract
REASON_SMOKE = "smoke"  # inference on real windows failed, or gave bad values


def model_key(version: str, part: str) -> str:
    return f"tickcast:models:{version}:{part}"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class ModelRejected(Exception):
    """A candidate model was refused; ``reason`` is a bounded metric label, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class NoModel(RuntimeError):
    """predict() was called while no model is loaded."""


class RegistryUnavailable(Exception):
    """The registry could not be read (Redis down, unreadable ``current``); try again later."""


def parse_time_ms(value: str) -> int | None:
    """Epoch ms of an ISO-8601 time (naive means UTC), or None when empty or unparsable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


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

    def run(self, batch: FloatArray) -> FloatArray:
        """Blocking inference on ``[n, window, 5]``; call it from a worker thread."""
        if batch.ndim != 3 or batch.shape[1:] != (self.spec.window, N_FEATURES):
            raise ValueError(
                f"batch shape {batch.shape}, model {self.version} needs "
                f"[n, {self.spec.window}, {N_FEATURES}]"
            )
        if batch.shape[0] == 0:
            return np.empty((0, self.spec.horizon, len(self.spec.quantiles)), dtype=np.float32)
        outputs = []
        for start in range(0, batch.shape[0], CHUNK_ROWS):
            feed = {INPUT_NAME: np.ascontiguousarray(batch[start : start + CHUNK_ROWS], np.float32)}
            (out,) = self.session.run([OUTPUT_NAME], feed)
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


def _check_io(session: ort.InferenceSession, spec: ModelSpec) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ContractError(f"model has inputs {names}, expected exactly [{INPUT_NAME!r}]")
    if len(outputs) != 1:
        names = [o.name for o in outputs]
        raise ContractError(f"model has outputs {names}, expected exactly [{OUTPUT_NAME!r}]")
    check_io_shapes(
        inputs[0].name, list(inputs[0].shape), outputs[0].name, list(outputs[0].shape), spec
    )
    for what, arg in (("input", inputs[0]), ("output", outputs[0])):
        if arg.type != "tensor(float)":
            raise ContractError(f"model {what} {arg.name!r} is {arg.type}, expected tensor(float)")


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
        spec = parse_metadata(dict(session.get_modelmeta().custom_metadata_map))
        _check_io(session, spec)
    except ContractError as exc:
        raise ModelRejected(REASON_CONTRACT, f"contract violation: {exc}") from None
    trained_at = spec.trained_at or created_at or ""
    return LoadedModel(
        session=session,
        spec=spec,
        sha256=digest,
        loaded_at_ms=wall_ms(),
        trained_at=trained_at,
        trained_at_ms=parse_time_ms(trained_at),
        source=source,
    )


def _flat_windows(window: int, rows: int = 2) -> FloatArray:
    bars = np.full((rows, window, N_FEATURES), SMOKE_FALLBACK_PRICE, dtype=np.float32)
    bars[:, :, 4] = 0.0  # minutes without trades, as the aggregator emits them
    return bars


def smoke_check(model: LoadedModel, windows: FloatArray | None) -> None:
    """Run ``model`` on real windows; raise ModelRejected unless every output row is good.

    At least two rows go in, so a model exported with a fixed batch of one is caught here
    rather than at the first minute close.
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
    try:
        out = model.run(batch)
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


def _timed_run(model: LoadedModel, batch: FloatArray) -> tuple[FloatArray, float]:
    started = time.perf_counter()
    output = model.run(batch)
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

    async def predict(self, batch: FloatArray, model: LoadedModel | None = None) -> FloatArray:
        """``[n, horizon, n_quantiles]`` for ``batch``, computed off the event loop."""
        output, _ = await self.submit(batch, model)
        return output

    def submit(
        self, batch: FloatArray, model: LoadedModel | None = None
    ) -> asyncio.Future[tuple[FloatArray, float]]:
        """Queue ``batch`` on the worker thread now; the future gives the output and the
        seconds the thread spent on it (queueing excluded). Call from the event loop."""
        model = model or self._current
        if model is None:
            raise NoModel("no model is loaded")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, _timed_run, model, batch)

    def stale(self, now_ms: int | None = None, model: LoadedModel | None = None) -> bool:
        model = model or self._current
        if model is None:
            return False
        return model.stale(self.max_age_s, wall_ms() if now_ms is None else now_ms)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# --- registries ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Artifact:
    """Bytes of one model version and what its manifest says about them."""

    version: str
    data: bytes
    sha256: str | None
    created_at: str | None
    source: str


class Registry(Protocol):
    """Where the watcher finds models. ``current`` returns a token that changes with the model."""

    name: str

    async def current(self) -> str | None: ...

    async def fetch(self, version: str) -> Artifact: ...

    async def listen(self, wake: asyncio.Event) -> None:
        """Set ``wake`` whenever the registry announces a change; return if it never does."""
        ...


def _check_version(version: str, where: str) -> str:
    if not _VERSION_RE.fullmatch(version) or version in {".", ".."}:
        raise RegistryUnavailable(f"{where}: current version {version!r} is not a valid name")
    return version


def _parse_manifest(raw: bytes | str, where: str) -> tuple[str, str | None]:
    """(sha256, created_at) from a manifest, or ModelRejected("manifest")."""
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelRejected(REASON_MANIFEST, f"{where}: manifest is not JSON: {exc}") from None
    sha = manifest.get("sha256") if isinstance(manifest, dict) else None
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise ModelRejected(REASON_MANIFEST, f"{where}: manifest has no valid sha256")
    created = manifest.get("created_at")
    return sha, created if isinstance(created, str) else None


class DirectoryRegistry:
    """The trainer's directory registry (layout in the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.name = f"dir:{self.root}"

    def _read_current(self) -> str | None:
        path = self.root / "current"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryUnavailable(f"{path}: {exc}") from None
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RegistryUnavailable(f"{path} is not JSON") from None
        version = doc.get("version") if isinstance(doc, dict) else None
        if not isinstance(version, str):
            raise RegistryUnavailable(f'{path} has no "version" string')
        return _check_version(version, str(path))

    async def current(self) -> str | None:
        return await asyncio.to_thread(self._read_current)

    def _read(self, version: str) -> Artifact:
        vdir = self.root / "versions" / version
        try:
            manifest_raw = (vdir / "manifest.json").read_bytes()
            data = (vdir / "model.onnx").read_bytes()
        except FileNotFoundError as exc:
            raise ModelRejected(REASON_MISSING, f"{vdir}: {exc.filename} is missing") from None
        except OSError as exc:
            raise RegistryUnavailable(f"{vdir}: {exc}") from None
        sha, created = _parse_manifest(manifest_raw, str(vdir))
        return Artifact(version, data, sha, created, f"{self.name}@{version}")

    async def fetch(self, version: str) -> Artifact:
        return await asyncio.to_thread(self._read, version)

    async def listen(self, wake: asyncio.Event) -> None:
        return  # polling only


_REDIS_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


class RedisRegistry:
    """The trainer's Redis registry (keys in the module docstring).

    The client must not decode responses (the artifact is bytes); ``from_url`` makes one.
    """

    def __init__(
        self,
        client: Redis,
        *,
        name: str = "redis",
        resubscribe_initial_s: float = 0.5,
        resubscribe_max_s: float = 30.0,
    ) -> None:
        self._client = client
        self.name = name
        self._backoff = Backoff(resubscribe_initial_s, resubscribe_max_s)
        self.subscribed = False

    @classmethod
    def from_url(cls, url: str, socket_timeout: float = 5.0) -> RedisRegistry:
        client = Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )
        return cls(client, name=redact_url(url))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def current(self) -> str | None:
        try:
            raw = await self._client.get(CURRENT_KEY)
        except (*_REDIS_DOWN, redis_errors.RedisError) as exc:
            raise RegistryUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from None
        if raw is None:
            return None
        version = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return _check_version(version.strip(), f"{self.name} {CURRENT_KEY}")

    async def fetch(self, version: str) -> Artifact:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(model_key(version, "onnx"))
                pipe.get(model_key(version, "manifest"))
                data, manifest_raw = await pipe.execute()
        except (*_REDIS_DOWN, redis_errors.RedisError) as exc:
            raise RegistryUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from None
        where = f"{self.name} version {version}"
        if data is None or manifest_raw is None:
            part = "onnx" if data is None else "manifest"
            raise ModelRejected(REASON_MISSING, f"{where}: {model_key(version, part)} is missing")
        if isinstance(data, str):
            raise ModelRejected(REASON_CORRUPT, f"{where}: client decodes responses; need bytes")
        sha, created = _parse_manifest(manifest_raw, where)
        return Artifact(version, bytes(data), sha, created, f"{self.name}@{version}")

    async def listen(self, wake: asyncio.Event, poll_s: float = 1.0) -> None:
        """Follow the events channel; resubscribe with backoff after a lost connection.

        Every (re)subscription also sets ``wake``: announcements sent while the connection was
        down are lost, so the watcher reads ``current`` again.
        """
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(EVENTS_CHANNEL)
                self.subscribed = True
                self._backoff.reset()
                wake.set()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=poll_s
                    )
                    if message is not None and message.get("type") == "message":
                        wake.set()
            except Exception as exc:  # connection loss above all; polling covers meanwhile
                delay = self._backoff.next_delay()
                log.warning(
                    "model events: %s: %s: %s; resubscribing in %.1fs",
                    self.name,
                    type(exc).__name__,
                    exc,
                    delay,
                )
            finally:
                self.subscribed = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)


class ModelFile:
    """One model file, no registry: the token is (mtime, size), so any rewrite is noticed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"

    def _token(self) -> str | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryUnavailable(f"{self.path}: {exc}") from None
        return f"{st.st_mtime_ns}-{st.st_size}"

    async def current(self) -> str | None:
        return await asyncio.to_thread(self._token)

    def _read(self, version: str) -> Artifact:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise ModelRejected(REASON_MISSING, f"{self.path} is missing") from None
        except OSError as exc:
            raise RegistryUnavailable(f"{self.path}: {exc}") from None
        return Artifact(version, data, None, None, self.name)

    async def fetch(self, version: str) -> Artifact:
        return await asyncio.to_thread(self._read, version)

    async def listen(self, wake: asyncio.Event) -> None:
        return  # polling only


def open_registry(location: str) -> DirectoryRegistry | RedisRegistry | ModelFile:
    """``redis://``/``rediss://`` URL, a registry directory, or a single ``.onnx`` file."""
    if location.startswith(("redis://", "rediss://", "unix://")):
        return RedisRegistry.from_url(location)
    path = Path(location)
    if path.is_file() or (not path.exists() and path.suffix == ".onnx"):
        return ModelFile(path)
    return DirectoryRegistry(path)


# --- the watcher ---------------------------------------------------------------------------


class RegistryWatcher:
    """Follows the registry's current version and hot-swaps the server's model after checks.

    ``run()`` belongs to the app's TaskGroup. Counters are plain attributes, read by the
    metrics collector at scrape time.
    """

    def __init__(
        self,
        registry: Registry,
        server: ModelServer,
        *,
        poll_interval_s: float = 5.0,
        retry_failed_s: float = 300.0,
        smoke_windows: SmokeWindows | None = None,
    ) -> None:
        self.registry = registry
        self.server = server
        self.poll_interval_s = poll_interval_s
        self.retry_failed_s = retry_failed_s
        self.smoke_windows = smoke_windows
        self.reload_successes_total = 0
        self.reload_failures_total: Counter[str] = Counter()
        self.registry_errors_total = 0
        self.last_failure: str | None = None
        self.serving_token: str | None = None  # the registry's name for what serves now
        self._failed: dict[str, float] = {}  # token -> monotonic time to try again
        self._registry_down = False
        self._wake = asyncio.Event()
        self._trim_due = False  # a model was loaded and dropped: give its heap back

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.registry.listen(self._wake), name="model-events")
            tg.create_task(self._poll(), name="model-poll")

    async def _poll(self) -> None:
        while True:
            self._wake.clear()
            if self._trim_due:  # a poll later: no forecast round still holds the old model
                self._trim_due = False
                release_freed_memory()
            try:
                await self.check_once()
            except Exception:  # a bug here must not take the daemon down; the old model serves
                self.registry_errors_total += 1
                log.exception("model registry check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def check_once(self) -> bool:
        """Read the current version and, if it is new, validate and swap; True on a swap."""
        try:
            token = await self.registry.current()
        except RegistryUnavailable as exc:
            self._note_registry_error(exc)
            return False
        if self._registry_down:
            self._registry_down = False
            log.info("model registry %s is readable again", self.registry.name)
        if token is None or token == self.serving_token:
            return False
        retry_at = self._failed.get(token)
        if retry_at is not None and time.monotonic() < retry_at:
            return False
        try:
            model = await self._validate(token)
        except RegistryUnavailable as exc:
            self._note_registry_error(exc)
            return False
        except ModelRejected as rejected:
            self._refuse(token, rejected)
            return False
        if model is None:  # same bytes as the model serving (a touched file, a re-promotion)
            self.serving_token = token
            return False
        old = self.server.swap(model)
        self._trim_due = True
        self.serving_token = token
        self._failed.pop(token, None)
        self.reload_successes_total += 1
        log.info(
            "model %s (sha256 %s, trained %s) now serving from %s, replacing %s",
            model.version,
            model.sha256[:12],
            model.trained_at or "unknown",
            model.source,
            old.version if old else "nothing",
        )
        return True

    async def _validate(self, token: str) -> LoadedModel | None:
        artifact = await self.registry.fetch(token)
        serving = self.server.current
        if serving is not None and hashlib.sha256(artifact.data).hexdigest() == serving.sha256:
            return None
        model = await asyncio.to_thread(
            open_model,
            artifact.data,
            artifact.sha256,
            created_at=artifact.created_at,
            source=artifact.source,
        )
        # windows are read here, on the event loop that owns them, then scored in a thread
        windows = self.smoke_windows(model.spec.window) if self.smoke_windows else None
        await asyncio.to_thread(smoke_check, model, windows)
        return model

    def _refuse(self, token: str, rejected: ModelRejected) -> None:
        self._trim_due = True
        self.reload_failures_total[rejected.reason] += 1
        self.last_failure = f"{token}: {rejected.reason}: {rejected.message}"
        now = time.monotonic()
        self._failed = {t: at for t, at in self._failed.items() if at > now}
        if len(self._failed) >= 64:  # bounded: forget the oldest refusal
            del self._failed[next(iter(self._failed))]
        self._failed[token] = now + self.retry_failed_s
        serving = self.server.current
        log.error(
            "model %s from %s refused (%s): %s; %s",
            token,
            self.registry.name,
            rejected.reason,
            rejected.message,
            f"model {serving.version} keeps serving" if serving else "no model is serving",
        )

    def _note_registry_error(self, exc: Exception) -> None:
        self.registry_errors_total += 1
        if not self._registry_down:  # log once per outage, not once per poll
            self._registry_down = True
            log.warning("model registry unreadable: %s", exc)
