"""A venue's REST pages as its dialect writes them: the request a route gets, its reply, and
the query parsing the venues share (each refuses a bad parameter in its own words).

Pure: the REST endpoint (``rest.py``) matches the paths and sends the replies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from streamer.replay.timeline import Timeline


@dataclass(frozen=True, slots=True)
class RestRequest:
    """A REST request as a route sees it: the raw query string, the replay clock's time, the
    timeline (what may be served: klines that have closed by ``now_ms``) and the values of the
    route's ``{name}`` path segments."""

    query: str
    now_ms: int
    timeline: Timeline
    path_params: Mapping[str, str] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, str]:
        """The query's parameters; of a repeated one, the last."""
        return {k: v[-1] for k, v in parse_qs(self.query, keep_blank_values=True).items()}


@dataclass(frozen=True, slots=True)
class RestReply:
    status: int
    body: Any  # JSON-serialisable
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RestRoute:
    """One REST path (a ``{name}`` segment matches any one segment, e.g.
    ``/products/{product_id}/candles``). ``throttled`` routes answer the ``Faults``
    rest_429/rest_418 first."""

    handler: Callable[[RestRequest], RestReply]
    throttled: bool = False


class Refused(Exception):
    """A request the venue refuses: its message, and its code where the venue gives one."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.message, self.code = message, code


def int_param(params: Mapping[str, str], name: str, refusal: str, code: str = "") -> int | None:
    """Parameter ``name`` as a whole number; None when absent or empty. Anything else is
    ``Refused`` with ``refusal`` (``{name}`` in it: the parameter's name) and ``code``."""
    text = params.get(name, "")
    if text == "":
        return None
    if not text.isdigit():
        raise Refused(refusal.format(name=name), code)
    return int(text)
