"""Hot reload: follow the registry's current version and swap the server's model after checks.

A forecast round takes the model reference once and uses it throughout, so a swap lands
between two rounds: no minute is skipped or forecast twice. A refused candidate (a
``ModelRejected``, ``Permanent``) is counted by reason, logged, and not tried again until the
registry's current version changes (or ``retry_failed_s`` passes); the old model keeps serving.
An unreadable registry (``RegistryUnavailable``, ``Transient``) is counted and logged once per
outage, and read again at the next poll.

Contract-1 and contract-2 models swap into each other alike. A model whose window is longer
than the bars the streamer keeps in memory (``max_window``) is refused as a contract
violation: it could never forecast, and the model serving now can.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from dataclasses import KW_ONLY, dataclass

from streamer.io.model.registries import Registry, RegistryUnavailable
from streamer.io.model.session import (
    REASON_CONTRACT,
    LoadedModel,
    ModelRejected,
    ModelServer,
    SmokeWindows,
    open_model,
    release_freed_memory,
    smoke_check,
)
from streamer.io.waits import wait_event

log = logging.getLogger(__name__)


@dataclass(eq=False)
class RegistryWatcher:
    """Follows the registry's current version and hot-swaps the server's model after checks.

    ``run()`` belongs to the app's TaskGroup. Counters are plain attributes, read by the
    metrics collector at scrape time.
    """

    registry: Registry
    server: ModelServer
    _: KW_ONLY
    poll_interval_s: float = 5.0
    retry_failed_s: float = 300.0
    smoke_windows: SmokeWindows | None = None
    max_window: int | None = None  # bars per symbol in memory; None: no limit

    def __post_init__(self) -> None:
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
            await wait_event(self._wake, self.poll_interval_s)

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
        if self.max_window is not None and model.spec.window > self.max_window:
            raise ModelRejected(
                REASON_CONTRACT,
                f"window of {model.spec.window} bars, the streamer keeps {self.max_window} per "
                "symbol in memory (TICKCAST_WINDOW_MEMORY_BARS)",
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
