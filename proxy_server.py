#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""proxy_server: relay Gloo AI completion streams to browsers and OpenAI clients.

The proxy holds the Gloo credentials; browsers and apps talk to it and never see them.
It relays each upstream event the moment it arrives, and bounds everything a client or
the upstream could use to exhaust it.

    python proxy_server.py                 # 127.0.0.1:3001, credentials from the environment or .env
    python proxy_server.py --offline       # on the built-in simulator (fake_gloo.py beside it)

Routes: GET / (the chat page), GET /health, GET /metrics, POST /api/stream,
POST /v1/chat/completions, GET /v1/models, OPTIONS preflight.
Standard library only, plus gloo_stream.py beside this file.
"""

from __future__ import annotations

import argparse
import collections
import errno
import heapq
import hmac
import html
import io
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import selectors
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union
from collections.abc import Iterable, Mapping, Sequence

try:
    import gloo_stream
except ModuleNotFoundError:  # `python -I proxy_server.py`: isolated mode leaves the script's folder off sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gloo_stream
from gloo_stream import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ChatStream,
    ConfigurationError,
    GlooClient,
    ModelInfo,
    ResponseStream,
    ServerSentEvent,
    StreamError,
    TokenError,
    UnexpectedResponseError,
    redact,
    _ROUTING_FIELDS,
    _check_structured,
    _header,
    _structured_result,
    _structured_schema,
    _structured_text,
    _structured_tools,
)

__all__ = ["SETTINGS", "ProxyConfig", "ProxyServer", "Setting", "main"]

_Stream = Union[ChatStream, ResponseStream]  # what the relay moves: a chat or a Responses API stream

SERVICE_NAME = "completions-streaming-proxy"
_HERE = os.path.dirname(os.path.abspath(__file__))
_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
_SECURITY_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
_HEARTBEAT_FRAME = b": keep-alive\n\n"
_AUTH_FAILURES_FOR_DEGRADED = 3  # upstream credential failures in a row before /health says "degraded"

log = logging.getLogger("gloo_proxy")


# ---------------------------------------------------------------------------
# Settings: one table gives the typed config its defaults, from_env, the options and their help
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One relay setting: config field, environment variable, kind, default, bounds and help."""

    name: str
    env: str
    kind: str  # "str", "secret", "int", "float", "list" (comma-separated) or "choice"
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = ""  # "" derives --name-with-dashes; None: environment only
    library: bool = False  # gloo_stream reads the variable itself when the value is left None

    @property
    def option(self) -> str | None:
        """The command-line option, or None for a setting read from the environment only."""
        if self.flag is None:
            return None
        return self.flag or "--" + self.name.replace("_", "-")

    def parse(self, raw: str, source: str) -> Any:
        """The value for `raw` (from `source`: a variable or an option), checked against the bounds."""
        if self.kind == "list":
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        text = raw.strip()
        if self.kind not in ("int", "float"):
            value: Any = text or None
        else:
            try:
                value = float(text)
            except ValueError:
                raise ConfigurationError(f"{source} must be a number, got {raw!r}") from None
            if self.kind == "int":
                if not value.is_integer():
                    raise ConfigurationError(f"{source} must be a whole number, got {raw!r}")
                value = int(value)
        self.check(value, source)
        return value

    def check(self, value: Any, source: str) -> None:
        """Raise ConfigurationError naming `source` when `value` is out of bounds."""
        if value is None:
            return
        if self.kind in ("int", "float"):
            number = float(value)
            if not math.isfinite(number) or (self.minimum is not None and number < self.minimum):
                raise ConfigurationError(f"{source} must be at least {self.minimum:g}, got {value!r}")
            if self.maximum is not None and number > self.maximum:
                raise ConfigurationError(f"{source} must be at most {self.maximum:g}, got {value!r}")
        elif self.kind == "choice" and value not in self.choices:
            raise ConfigurationError(f"{source} must be one of {', '.join(self.choices)}, got {value!r}")

    def source(self) -> str:
        """How a person sets it: the variable, and the option when there is one."""
        return f"{self.env} ({self.option})" if self.option else self.env

    def describe(self) -> str:
        """The option's help line: what it does, its variable and default."""
        default = ",".join(self.default) if isinstance(self.default, tuple) else self.default
        shown = f", default {default}" if default not in (None, "") else ""
        return f"{self.help} [{self.env}{shown}]"


_MIB = 1024 * 1024
SETTINGS: tuple[Setting, ...] = (
    Setting("host", "PROXY_HOST", "str", "127.0.0.1", "address to bind"),
    Setting("port", "PROXY_PORT", "int", 3001, "port to bind, 0 for any free one", 0, 65535),
    Setting("cors_origins", "PROXY_CORS_ORIGIN", "list", ("http://localhost:3000",),
            "comma-separated origins whose pages may call the API; * for any page (no credentials)",
            flag="--cors-origin"),
    Setting("allowed_hosts", "PROXY_ALLOWED_HOSTS", "list", (),
            "host names of this proxy, trusted as its own page's origin when bound beyond loopback"),
    Setting("api_key", "PROXY_API_KEY", "secret", None,
            "the key clients must send as Authorization: Bearer (environment only)", flag=None),
    Setting("max_body_bytes", "PROXY_MAX_BODY_BYTES", "int", _MIB, "largest request body", 1),
    Setting("max_answer_bytes", "PROXY_MAX_ANSWER_BYTES", "int", 8 * _MIB,
            "largest answer buffered for a non-streaming /v1 request", 1),
    Setting("max_streams", "PROXY_MAX_STREAMS", "int", 256, "streams relayed at once", 1),
    Setting("max_connections", "PROXY_MAX_CONNECTIONS", "int", 4096,
            "client connections open at once (past it, a 503 at once)", 1),
    Setting("max_connections_per_client", "PROXY_MAX_CONNECTIONS_PER_CLIENT", "int", 256,
            "client connections open at once from one address (PROXY_TRUSTED_PROXIES not counted; past it, a 429)",
            1),
    Setting("rate_limit_per_minute", "PROXY_RATE_LIMIT_PER_MINUTE", "int", 120,
            "requests per client address per minute, 0 for none", 0),
    Setting("auth_failures_per_minute", "PROXY_AUTH_FAILURES_PER_MINUTE", "int", 10,
            "wrong PROXY_API_KEY guesses per client address per minute", 0),
    Setting("heartbeat_seconds", "PROXY_HEARTBEAT_SECONDS", "float", 15.0,
            "send ': keep-alive' after this much upstream silence", 0.01),
    Setting("upstream_idle_seconds", "PROXY_UPSTREAM_IDLE_SECONDS", "float", 60.0,
            "give up on a silent upstream after this long", 0.01),
    Setting("request_timeout_seconds", "PROXY_REQUEST_TIMEOUT_SECONDS", "float", 10.0,
            "time to receive a request's headers and body", 0.01),
    Setting("write_timeout_seconds", "PROXY_WRITE_TIMEOUT_SECONDS", "float", 30.0,
            "cut off a client that stops reading", 0.01),
    Setting("max_event_bytes", "PROXY_MAX_EVENT_BYTES", "int", _MIB, "largest upstream event", 1),
    Setting("trusted_proxies", "PROXY_TRUSTED_PROXIES", "list", (),
            "addresses/CIDRs whose X-Forwarded-For is believed"),
    Setting("drain_seconds", "PROXY_DRAIN_SECONDS", "float", 30.0,
            "on SIGTERM/SIGINT, let streams finish for this long", 0),
    Setting("log_format", "PROXY_LOG_FORMAT", "choice", "text", "request log format", choices=("text", "json")),
    Setting("web_root", "PROXY_WEB_ROOT", "str", os.path.join(_HERE, "web"), "folder of the page's files"),
    Setting("unknown_fields", "PROXY_UNKNOWN_FIELDS", "choice", "drop",
            "a request field Gloo does not document: drop it (named in X-Gloo-Dropped-Fields and the log), "
            "refuse it (400) or forward it", choices=("drop", "refuse", "forward")),
    Setting("upstream_retries", "PROXY_UPSTREAM_RETRIES", "int", 1,
            "retries of a failed upstream request before its first byte (never a 429)", 0, 5),
    Setting("endpoint", "GLOO_ENDPOINT", "choice", None,
            "Gloo's endpoint: completions (default), or guarded (Studio API keys)",
            choices=("completions", "guarded"), library=True),
    Setting("api_url", "GLOO_API_URL", "str", None, "the completions URL (grounded requests add /grounded)",
            library=True),
    Setting("token_url", "GLOO_TOKEN_URL", "str", None, "the OAuth token URL", flag=None, library=True),
    Setting("models_url", "GLOO_MODELS_URL", "str", None,
            "the model catalog (default: Gloo's public /platform/v2/models on the API's host)", flag=None,
            library=True),
    Setting("client_id", "GLOO_CLIENT_ID", "str", None, "OAuth client id", flag=None, library=True),
    Setting("client_secret", "GLOO_CLIENT_SECRET", "secret", None, "OAuth client secret", flag=None, library=True),
    Setting("upstream_api_key", "GLOO_API_KEY", "secret", None, "a Gloo Studio API key (instead of OAuth)",
            flag=None, library=True),
)

def _normalise_origin(text: str) -> str:
    """An origin as browsers send it: lower-case scheme and host, no default port, no trailing slash."""
    if text == "*":
        return text
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"PROXY_CORS_ORIGIN: not an origin: {text!r}") from None
    scheme = parts.scheme.lower()
    if (scheme not in ("http", "https") or not parts.hostname or parts.username is not None
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise ConfigurationError(f"PROXY_CORS_ORIGIN entries must be http(s) origins such as "
                                 f"https://app.example.com, got {text!r}")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


_SETTING_BY_NAME = {setting.name: setting for setting in SETTINGS}


def _default(name: str) -> Any:
    return _SETTING_BY_NAME[name].default


@dataclass
class ProxyConfig:
    """Everything the proxy needs: one typed field per entry of SETTINGS, its default taken from the
    table (the suite checks that the two match). `from_env()` reads PROXY_* variables."""

    host: str = _default("host")
    port: int = _default("port")
    cors_origins: tuple[str, ...] = _default("cors_origins")
    allowed_hosts: tuple[str, ...] = _default("allowed_hosts")
    api_key: str | None = field(default=_default("api_key"), repr=False)
    max_body_bytes: int = _default("max_body_bytes")
    max_answer_bytes: int = _default("max_answer_bytes")
    max_streams: int = _default("max_streams")
    max_connections: int = _default("max_connections")
    max_connections_per_client: int = _default("max_connections_per_client")
    rate_limit_per_minute: int = _default("rate_limit_per_minute")
    auth_failures_per_minute: int = _default("auth_failures_per_minute")
    heartbeat_seconds: float = _default("heartbeat_seconds")
    upstream_idle_seconds: float = _default("upstream_idle_seconds")
    request_timeout_seconds: float = _default("request_timeout_seconds")
    write_timeout_seconds: float = _default("write_timeout_seconds")
    max_event_bytes: int = _default("max_event_bytes")
    trusted_proxies: tuple[str, ...] = _default("trusted_proxies")
    drain_seconds: float = _default("drain_seconds")
    log_format: str = _default("log_format")
    web_root: str = _default("web_root")
    unknown_fields: str = _default("unknown_fields")
    upstream_retries: int = _default("upstream_retries")
    endpoint: str | None = _default("endpoint")
    api_url: str | None = _default("api_url")
    token_url: str | None = _default("token_url")
    models_url: str | None = _default("models_url")
    client_id: str | None = _default("client_id")
    client_secret: str | None = field(default=_default("client_secret"), repr=False)
    upstream_api_key: str | None = field(default=_default("upstream_api_key"), repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ProxyConfig:
        """Read PROXY_* variables (explicit `overrides` win); raises ConfigurationError on bad values.

        GLOO_* settings are left None here: gloo_stream reads them itself when the client is built.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = env.get(setting.env)
            if setting.library or raw is None or (raw.strip() == "" and setting.kind != "list"):
                continue
            values[setting.name] = setting.parse(raw, setting.env)
        values.update({key: value for key, value in overrides.items() if value is not None})
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigurationError when a value cannot work; normalises origins and host names."""
        for setting in SETTINGS:
            setting.check(getattr(self, setting.name), setting.source())
        origins = tuple(_normalise_origin(origin) for origin in self.cors_origins)
        self.cors_origins = origins
        self.allowed_hosts = tuple(name.strip().lower().rstrip(".") for name in self.allowed_hosts)
        _parse_networks(self.trusted_proxies)


def _parse_networks(entries: Sequence[str]) -> tuple[Any, ...]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigurationError(f"PROXY_TRUSTED_PROXIES: not an address or CIDR range: {entry!r}") from None
    return tuple(networks)


# ---------------------------------------------------------------------------
# Limits and metrics
# ---------------------------------------------------------------------------


class _RateLimiter:
    """A token bucket per client: `per_minute` requests, refilled continuously."""

    _MAX_KEYS = 50_000

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when allowed (a token is spent), else the seconds until the next token."""
        if self.capacity <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - stamp) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > self._MAX_KEYS:
                    self._prune(now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        # Forget clients whose bucket has refilled: they are indistinguishable from new ones.
        full = [key for key, (tokens, stamp) in self._buckets.items()
                if tokens + (now - stamp) * self.rate >= self.capacity]
        for key in full:
            del self._buckets[key]


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1


class _Metrics:
    """Counters for /metrics (Prometheus text format) and /health."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: dict[tuple[str, int], int] = {}
        self.streams: dict[str, int] = {}
        self.upstream_errors: dict[str, int] = {}
        self.bytes_relayed = 0
        self.events_relayed = 0
        self.refused_connections = 0
        self.ttft = _Histogram((0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.duration = _Histogram((0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))

    def request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1

    def stream_done(self, outcome: str, duration: float, ttft: float | None, events: int, nbytes: int) -> None:
        with self._lock:
            self.streams[outcome] = self.streams.get(outcome, 0) + 1
            self.duration.observe(duration)
            if ttft is not None:
                self.ttft.observe(ttft)
            self.events_relayed += events
            self.bytes_relayed += nbytes

    def connection_refused(self) -> None:
        with self._lock:
            self.refused_connections += 1

    def upstream_error(self, kind: str) -> None:
        with self._lock:
            self.upstream_errors[kind] = self.upstream_errors.get(kind, 0) + 1

    def render(self, active_streams: int) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        with self._lock:
            family("gloo_proxy_requests_total", "counter", "Requests answered, by route and status.")
            for (route, status), count in sorted(self.requests.items()):
                out.append(f'gloo_proxy_requests_total{{route="{route}",status="{status}"}} {count}')
            family("gloo_proxy_active_streams", "gauge", "Streams being relayed now.")
            out.append(f"gloo_proxy_active_streams {active_streams}")
            family("gloo_proxy_streams_total", "counter", "Finished streams, by outcome.")
            for outcome, count in sorted(self.streams.items()):
                out.append(f'gloo_proxy_streams_total{{outcome="{outcome}"}} {count}')
            family("gloo_proxy_upstream_errors_total", "counter", "Upstream failures, by kind.")
            for kind, count in sorted(self.upstream_errors.items()):
                out.append(f'gloo_proxy_upstream_errors_total{{kind="{kind}"}} {count}')
            family("gloo_proxy_refused_connections_total", "counter",
                   "Connections answered 503 at once because PROXY_MAX_CONNECTIONS were open.")
            out.append(f"gloo_proxy_refused_connections_total {self.refused_connections}")
            family("gloo_proxy_relayed_bytes_total", "counter", "Event-stream bytes written to clients.")
            out.append(f"gloo_proxy_relayed_bytes_total {self.bytes_relayed}")
            family("gloo_proxy_relayed_events_total", "counter", "Events written to clients.")
            out.append(f"gloo_proxy_relayed_events_total {self.events_relayed}")
            for name, hist, help_text in (
                ("gloo_proxy_time_to_first_token_seconds", self.ttft, "Time from request to first content event."),
                ("gloo_proxy_stream_duration_seconds", self.duration, "Time from request to end of stream."),
            ):
                family(name, "histogram", help_text)
                for bound, count in zip(hist.buckets, hist.counts):
                    out.append(f'{name}_bucket{{le="{bound:g}"}} {count}')
                out.append(f'{name}_bucket{{le="+Inf"}} {hist.count}')
                out.append(f"{name}_sum {hist.total:.6f}")
                out.append(f"{name}_count {hist.count}")
            family("gloo_proxy_uptime_seconds", "gauge", "Seconds since the proxy started.")
            out.append(f"gloo_proxy_uptime_seconds {time.time() - self.started:.3f}")
        return "\n".join(out) + "\n"

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": sum(self.requests.values()),
                "streams": dict(self.streams),
                "events_relayed": self.events_relayed,
            }


def _refusal(status: str, message: str, error_type: str, code: str) -> bytes:
    """A whole answer written at accept time, with no thread: the connection is closed after it."""
    body = json.dumps({"error": {"message": message, "type": error_type, "code": code}}).encode()
    return (b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (status.encode(), len(body), body))


_OVERLOADED_RESPONSE = _refusal("503 Service Unavailable", "too many open connections; try again shortly",
                                "server_error", "overloaded")
_TOO_MANY_FROM_YOU = _refusal("429 Too Many Requests", "too many connections open from your address; close some "
                              "(PROXY_MAX_CONNECTIONS_PER_CLIENT)", "rate_limit_error", "too_many_connections")

_FALLBACK_PAGE_MARKER = "\0builtin-page"
_FALLBACK_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gloo-stream proxy</title></head>
<body><h1>gloo-stream proxy</h1>
<p>The chat page lives in <code>web/</code> beside <code>proxy_server.py</code>, and that folder was not found.</p>
<p>The API works: <code>curl -N -X POST {address}/api/stream -H 'Content-Type: application/json'
-d '{{"messages":[{{"role":"user","content":"Hello"}}]}}'</code></p></body></html>
"""


# ---------------------------------------------------------------------------
# Request reading with a deadline (slow clients cannot hold a thread for long)
# ---------------------------------------------------------------------------


class _DeadlineReader(io.RawIOBase):
    """Socket reads that share one deadline: the whole request must arrive before it."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline = float("inf")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("request read deadline passed")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _HeaderRecorder:
    """Stands in for rfile while http.server reads the header lines, to vet the raw bytes.

    RFC 9112 5.1-5.2: a line without a colon, whitespace before the colon and obsolete line
    folding are rejected, as is a bare CR (2.2): Python's parser would read them differently
    from a front proxy, so a header (or a whole request) could hide behind them.
    """

    def __init__(self, file: Any) -> None:
        self.file = file
        self.problem = ""

    def readline(self, limit: int = -1) -> bytes:
        line = self.file.readline(limit)
        if self.problem:
            return line
        body = line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else line
        if b"\r" in body:
            self.problem = "a header holds a bare CR"
        elif body and line.endswith(b"\n"):
            name, colon, _ = body.partition(b":")
            if body[:1] in (b" ", b"\t"):
                self.problem = "a header line is folded (obsolete line folding is not accepted)"
            elif not colon:
                self.problem = "a header line has no colon"
            elif not name or name != name.rstrip(b" \t"):
                self.problem = "a header name is empty or followed by whitespace before its colon"
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def _is_loopback_name(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False  # any other name could be made to point here (DNS rebinding)


def _is_address_literal(hostname: str) -> bool:
    try:
        return not ipaddress.ip_address(hostname.strip("[]")).is_unspecified
    except ValueError:
        return False


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def _printable(text: str) -> str:
    """Control characters (and backslashes) escaped, so a log line shows them and cannot be forged."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


# ---------------------------------------------------------------------------
# The one error type: an answer before the stream starts, or the error event after
# ---------------------------------------------------------------------------


class _RelayError(Exception):
    """A failure as the client sees it: status, JSON error fields, extra headers.

    Before the stream starts it is the whole answer; after, it is the one `data: {"error": ...}`
    event that ends the stream. `outcome` names it in the log and the metrics.
    """

    def __init__(self, status: int, message: str, *, error_type: str = "invalid_request_error",
                 code: Any = None, headers: dict[str, str] | None = None, close: bool = False,
                 outcome: str = "rejected") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = status if code is None else code
        self.headers = headers or {}
        self.close = close
        self.outcome = outcome

    def body(self) -> dict[str, Any]:
        """The JSON error object, redacted."""
        return {"error": {"message": redact(self.message), "type": self.error_type, "code": self.code}}

    def event(self) -> bytes:
        """The error as one event of the stream."""
        return ("data: " + json.dumps(self.body()) + "\n\n").encode()

    def typed_event(self, last_sequence: int | None) -> bytes:
        """The error as the Responses API's `error` event, numbered after the last event relayed."""
        data = {"type": "error", "code": self.error_type, "message": redact(self.message), "param": None,
                "sequence_number": 0 if last_sequence is None else last_sequence + 1}
        return ("event: error\ndata: " + json.dumps(data) + "\n\n").encode()

    @classmethod
    def mid_stream(cls, kind: str, message: str, *, status: int = 502, code: Any = None) -> _RelayError:
        """A failure after the 200: `kind` is both the event's type and the outcome."""
        return cls(status, message, error_type=kind, code=status if code is None else code, outcome=kind)


def _upstream_message(exc: APIStatusError) -> tuple[str, Any]:
    """Gloo's own words from an error body and its code, as the library read them (one reading of
    every shape: `{"error", "code"}`, `{"detail": [...]}`, the nested envelope)."""
    return exc.reason[:300], "validation_error" if exc.detail else exc.code


def _retry_after(exc: APIStatusError) -> str:
    """The upstream's own Retry-After when it is a plain number of seconds, else the library's reading."""
    raw = _header(exc.headers or {}, "Retry-After").strip()
    if raw.isdigit() and raw.isascii() and 0 < len(raw) <= 6 and int(raw) > 0:
        return raw
    wait = exc.retry_after if exc.retry_after is not None and math.isfinite(exc.retry_after) else 1
    return str(max(1, min(86400, math.ceil(wait))))


def _from_upstream(exc: Exception) -> tuple[str, _RelayError]:
    """What a failure before the first byte becomes for the client: (metrics kind, error)."""
    if isinstance(exc, APIStatusError):
        status = exc.status
        message, code = _upstream_message(exc)
        if status in (400, 422):
            return "bad_request", _RelayError(status, message or "the upstream rejected the request",
                                              code=code if code is not None else status)
        if status == 401:  # the proxy's own token or key: the instance's problem, not the caller's
            return "credentials", _RelayError(502, "the proxy's upstream credentials were rejected",
                                              error_type="upstream_error", code="upstream_auth")
        if status == 403:  # Gloo: no permission for this resource or publisher: the caller's request
            return "forbidden", _RelayError(403, message or "the upstream refused this request (403): no permission "
                                                 "for the resource or publisher asked for",
                                            error_type="permission_error", code=code or "forbidden")
        if status == 429:
            headers = {"Retry-After": _retry_after(exc)}
            reset = _header(exc.headers or {}, "X-RateLimit-Reset").strip()
            if reset.isdigit():
                headers["X-RateLimit-Reset"] = reset
            return "rate_limited", _RelayError(429, message or "the upstream is rate limiting; try again later",
                                               error_type="rate_limit_error",
                                               code=code or "upstream_rate_limited", headers=headers)
        text = f"the upstream answered {status}" + (f": {message}" if message else "")
        headers = {"Retry-After": _retry_after(exc)} if status == 503 else {}  # how long it asked clients to wait
        return f"status_{status}", _RelayError(502 if status != 503 else 503, text, error_type="upstream_error",
                                               code=code if isinstance(code, str) else status, headers=headers)
    if isinstance(exc, TokenError):
        return "credentials", _RelayError(502, "the proxy could not get an upstream token",
                                          error_type="upstream_error", code="upstream_auth")
    if isinstance(exc, APITimeoutError):
        return "timeout", _RelayError(504, "the upstream did not answer in time", error_type="upstream_error",
                                      code="upstream_timeout")
    if isinstance(exc, APIConnectionError) and exc.may_have_been_processed:
        return "connection", _RelayError(502, "the upstream failed after the request was sent (a closed or reset "
                                              "connection, or an answer that is not HTTP): it may have been "
                                              "processed, so it was not sent again",
                                         error_type="upstream_error", code="upstream_disconnected")
    if isinstance(exc, APIConnectionError):
        return "connection", _RelayError(502, "the upstream could not be reached", error_type="upstream_error",
                                         code="upstream_unreachable")
    if isinstance(exc, UnexpectedResponseError):
        return "bad_response", _RelayError(502, "the upstream answered something that is not an event stream",
                                           error_type="upstream_error", code="upstream_bad_response")
    return "other", _RelayError(502, "the upstream failed", error_type="upstream_error", code="upstream_error")


# ---------------------------------------------------------------------------
# Request bodies: JSON checks and the field policy
# ---------------------------------------------------------------------------


_MAX_JSON_DEPTH = 64  # far beyond any chat request; keeps re-encoding well inside the recursion limit


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (iterative: no recursion to exhaust)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > _MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_float=_finite_float, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise _RelayError(400, "the body is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise _RelayError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _RelayError(400, "the body must be a JSON object")
    if _depth(body) > _MAX_JSON_DEPTH:
        raise _RelayError(400, f"the body is nested more than {_MAX_JSON_DEPTH} levels deep")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _RelayError(400, "the body holds a lone surrogate (\\ud800-\\udfff): not valid Unicode") from None
    return body


# Gloo's documented request fields (completions v2 and grounded), forwarded as they are.
_GLOO_FIELDS = frozenset({
    "messages", "auto_routing", "model", "model_family", "tradition", "temperature", "max_tokens",
    "tools", "tool_choice", "parallel_tool_calls", "stream_options", "rag_publisher", "sources_limit",
    "include_citations",
})
_RENAMED_FIELDS = {"max_completion_tokens": "max_tokens"}  # OpenAI's name -> Gloo's
_HARMLESS_DEFAULTS = {"n": 1}  # OpenAI fields accepted when they ask for what Gloo does anyway


# The Responses API's request fields (OpenAI's, which Gloo says its Responses API mirrors), forwarded as they are.
_RESPONSES_FIELDS = frozenset({
    "input", "model", "instructions", "max_output_tokens", "temperature", "top_p", "tools", "tool_choice",
    "parallel_tool_calls", "previous_response_id", "reasoning", "text", "metadata", "store", "include",
    "truncation", "user", "background", "service_tier", "max_tool_calls", "top_logprobs", "prompt",
    "prompt_cache_key", "safety_identifier", "conversation", "stream_options",
})


@dataclass(frozen=True)
class _CompletionRequest:
    """What a client asked for, checked: the upstream payload and how to answer."""

    payload: dict[str, Any]
    stream: bool
    openai: bool
    include_usage: bool
    grounded: bool
    prompt_chars: int
    api: str = "chat"  # or "responses": Gloo's Responses API
    dropped: tuple[str, ...] = ()  # undocumented fields left out (PROXY_UNKNOWN_FIELDS=drop)
    translated: tuple[str, ...] = ()  # fields put into the words Gloo documents (X-Gloo-Translated)
    structured: bool = False  # a response_format answer: the forced tool call's arguments are the content
    schema: Any = None  # its schema, for the cheap check at the end

    @property
    def responses(self) -> bool:
        return self.api == "responses"


def _unknown_field(key: str, policy: str, dropped: list[str], accepted: str) -> bool:
    """Whether an undocumented field is forwarded; records it as dropped, or refuses it, as the policy says."""
    if policy == "forward":
        return True
    if policy == "drop":
        dropped.append(key)
        return False
    raise _RelayError(400, f"{key} is not a field {accepted}; remove it, or set PROXY_UNKNOWN_FIELDS=drop",
                      code="unsupported_field")


def _structured_output(body: dict[str, Any], payload: dict[str, Any]) -> Any:
    """OpenAI's `response_format` carried out as the library does it (a forced tool call whose arguments
    the relay answers as content); returns the schema, or None when no structured answer is asked for."""
    try:
        schema = _structured_schema(body.get("response_format"))
        if schema is not None:
            _structured_tools(payload, schema)
    except ConfigurationError as exc:
        raise _RelayError(400, str(exc), code="invalid_field") from None
    return schema


def _completion_request(body: dict[str, Any], *, openai: bool, policy: str = "refuse") -> _CompletionRequest:
    """Apply the field policy: documented Gloo fields forwarded, OpenAI names mapped, the rest as `policy`
    says (PROXY_UNKNOWN_FIELDS: drop, refuse with a 400, or forward)."""
    payload: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in body.items():
        if key in ("stream", "response_format") or value is None:
            continue
        target = _RENAMED_FIELDS.get(key, key)
        if key in _HARMLESS_DEFAULTS and value == _HARMLESS_DEFAULTS[key]:
            continue
        if target not in _GLOO_FIELDS and not _unknown_field(
                key, policy, dropped, f"Gloo's completions API accepts (accepted: {', '.join(sorted(_GLOO_FIELDS))}, "
                                      "max_completion_tokens)"):
            continue
        if target in payload and payload[target] != value:
            raise _RelayError(400, f"max_tokens and {key} disagree; send one of them", code="invalid_field")
        payload[target] = value
    _check_messages(payload.get("messages"))
    translated = _force_named_tool(payload)
    schema = _structured_output(body, payload) if openai else None
    if schema is not None:
        translated += ("response_format",)
    elif not openai and body.get("response_format") is not None:
        _unknown_field("response_format", policy, dropped, "of /api/stream (use /v1/chat/completions)")
    stream = body.get("stream", None if openai else True)
    if stream is not None and not isinstance(stream, bool):
        raise _RelayError(400, "stream must be true or false (a JSON boolean)", code="invalid_field")
    if openai and payload.get("model") in ("auto", ""):
        del payload["model"]
    if payload.get("auto_routing") is False:
        del payload["auto_routing"]
    routing = [key for key in _ROUTING_FIELDS if key in payload]
    if len(routing) > 1:
        raise _RelayError(400, "give only one of auto_routing, model and model_family", code="invalid_routing")
    if not routing:
        payload["auto_routing"] = True
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _RelayError(400, "stream_options must be an object such as {\"include_usage\": true}",
                          code="invalid_field")
    include_usage = bool(options and options.get("include_usage") is True)
    if (not openai or not stream) and options is None:
        # An OpenAI answer always reports its usage; the page's footer shows it and the answer's cost.
        payload["stream_options"] = {"include_usage": True}
    grounded = gloo_stream.is_grounded(payload)
    if grounded:
        payload.setdefault("include_citations", True)  # as the library asks (GlooClient.build_payload)
    payload["stream"] = True
    prompt_chars = sum(len(m["content"]) for m in payload["messages"] if isinstance(m.get("content"), str))
    return _CompletionRequest(payload, bool(stream) or not openai, openai, include_usage, grounded, prompt_chars,
                              dropped=tuple(dropped), translated=translated,
                              schema=schema,
                              structured=schema is not None)


def _force_named_tool(payload: dict[str, Any]) -> tuple[str, ...]:
    """OpenAI's `tool_choice: {"type": "function", "function": {"name": X}}` in the words Gloo documents
    (`none`, `auto`, `required`): `required`, with `tools` narrowed to X. Returns what was translated."""
    choice = payload.get("tool_choice")
    if not isinstance(choice, dict):
        return ()
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else choice.get("name")
    if choice.get("type") not in ("function", "tool") or not isinstance(name, str) or not name:
        raise _RelayError(400, 'tool_choice must be "none", "auto", "required" or {"type": "function", '
                               '"function": {"name": ...}}', code="invalid_field")
    tools = payload.get("tools")
    chosen = [tool for tool in tools if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
              and tool["function"].get("name") == name] if isinstance(tools, list) else []
    if not chosen:
        raise _RelayError(400, f"tool_choice names {name!r}, which is not among the request's tools",
                          code="invalid_field")
    payload["tools"], payload["tool_choice"] = chosen[:1], "required"
    return ("tool_choice",)


def _responses_request(body: dict[str, Any], *, openai: bool, policy: str = "refuse") -> _CompletionRequest:
    """The field policy for the Responses API: its fields forwarded, anything else as `policy` says."""
    payload: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in body.items():
        if key in ("stream", "api") or value is None:
            continue
        if key == "messages" and not openai:  # the page's conversation, as the Responses API's input items
            key = "input"
        if key == "messages" and openai:  # a chat body sent to the wrong route: never silently dropped
            raise _RelayError(400, "messages is a field of chat completions; the Responses API takes input",
                              code="unsupported_field")
        if key not in _RESPONSES_FIELDS and not _unknown_field(
                key, policy, dropped, f"of the Responses API (accepted: {', '.join(sorted(_RESPONSES_FIELDS))})"):
            continue
        payload[key] = value
    items = payload.get("input")
    if not (isinstance(items, str) and items) and not (isinstance(items, list) and items):
        raise _RelayError(400, "input must be a string or a non-empty list of input items", code="invalid_input")
    if not isinstance(payload.get("model"), str) or not payload["model"] or payload["model"] == "auto":
        raise _RelayError(400, "the Responses API needs a model (Gloo routes automatically only in Completions "
                               "V2): send a Gloo model id such as gloo-openai-gpt-5-mini (GET /v1/models)",
                          code="model_required")
    stream = body.get("stream", None if openai else True)
    if stream is not None and not isinstance(stream, bool):
        raise _RelayError(400, "stream must be true or false (a JSON boolean)", code="invalid_field")
    payload["stream"] = True  # the relay always streams from upstream; a non-streaming answer is assembled
    return _CompletionRequest(payload, bool(stream) or not openai, openai, False, False, _input_chars(items),
                              api="responses", dropped=tuple(dropped))


def _input_chars(items: Any) -> int:
    if isinstance(items, str):
        return len(items)
    total = 0
    for item in items if isinstance(items, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(part["text"]) for part in content
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
    return total


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _RelayError(400, "messages must be a non-empty list of {role, content} objects", code="invalid_messages")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _RelayError(400, "each message must be an object with a string role", code="invalid_messages")


# --offline: the simulator runs inside this process, so its scenario markers are capped.
_MARKER = re.compile(r"\[\[(long|huge_event|slow|trickle):([0-9.]+)((?::[a-z]+)?)\]\]")


def _cap_markers(payload: dict[str, Any], *, max_event_bytes: int) -> None:
    """Clamp the simulator's size and pace markers in place: [[long:2000000]] becomes [[long:5000]]
    (in chat messages, and in the Responses API's input, its text parts too)."""
    caps = {"long": 5000, "huge_event": max_event_bytes + 64 * 1024, "slow": 2.0, "trickle": 0.05}

    def cap(match: re.Match[str]) -> str:
        name, value, rest = match.group(1), match.group(2), match.group(3)
        try:
            number = float(value)
        except ValueError:
            return match.group(0)
        limit = caps[name]
        if number <= limit:
            return match.group(0)
        shown = str(int(limit)) if name in ("long", "huge_event") else f"{limit:g}"
        return f"[[{name}:{shown}{rest}]]"

    if isinstance(payload.get("input"), str):
        payload["input"] = _MARKER.sub(cap, payload["input"])
    items = payload.get("messages") if "messages" in payload else payload.get("input")
    for message in items if isinstance(items, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and "[[" in content:
            message["content"] = _MARKER.sub(cap, content)
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                part["text"] = _MARKER.sub(cap, part["text"])


# ---------------------------------------------------------------------------
# Relaying: the event writer, the two kinds of answer, and the loop between the sockets
# ---------------------------------------------------------------------------


def _encode_event(event: ServerSentEvent, last_id: str) -> str:
    """An event back in wire form (LF line ends); `id:` only where the last event id changed."""
    if event.event == "message" and event.id == last_id and event.retry is None and "\n" not in event.data:
        return "data: " + event.data + "\n\n"
    lines = []
    if event.event != "message":
        lines.append("event: " + event.event)
    if event.id != last_id:
        lines.append("id: " + event.id)
    if event.retry is not None:
        lines.append("retry: " + str(event.retry))
    lines.extend("data: " + line for line in event.data.split("\n"))
    return "\n".join(lines) + "\n\n"


class _EventWriter:
    """The event stream to the client: whole events, redacted, one chunk per write, then the terminator.

    HTTP/1.1 clients get chunked framing; an HTTP/1.0 client gets the bare stream, ended by
    closing the connection. `events` and `bytes` count what was relayed.
    """

    def __init__(self, write: Callable[[bytes], Any], *, chunked: bool) -> None:
        self._write = write
        self.chunked = chunked
        self.events = 0
        self.bytes = 0
        self.last_write = time.monotonic()
        self._last_id = ""

    def _frame(self, payload: bytes) -> None:
        self._write(b"%x\r\n%s\r\n" % (len(payload), payload) if self.chunked else payload)
        self.last_write = time.monotonic()

    def relay(self, batch: list[ServerSentEvent]) -> None:
        """One upstream read's events in one write."""
        parts = []
        for event in batch:
            parts.append(_encode_event(event, self._last_id))
            self._last_id = event.id
        # An upstream that echoes the proxy's own bearer token never hands it to a client.
        payload = redact("".join(parts)).encode("utf-8")
        self._frame(payload)
        self.events += len(batch)
        self.bytes += len(payload)

    def heartbeat(self) -> None:
        self._frame(_HEARTBEAT_FRAME)

    def end(self, tail: bytes = b"") -> None:
        """The last events (an error, [DONE]) and the end of the body."""
        if tail:
            self._frame(tail)
        if self.chunked:
            self._write(b"0\r\n\r\n")


class _StreamSink:
    """The streaming answer: events relayed as they came, then the ending the route needs."""

    heartbeats = True

    def __init__(self, writer: _EventWriter, request: _CompletionRequest) -> None:
        self.writer = writer
        self.request = request
        self.usage_sent = False

    @property
    def last_write(self) -> float:
        return self.writer.last_write

    def add(self, batch: list[ServerSentEvent]) -> None:
        if self.request.include_usage and self.request.openai and not self.request.responses:
            batch = [self._usage_once(event) if '"usage"' in event.data else event for event in batch]
        if self.request.structured:
            batch = [_as_content(event) for event in batch]
        self.writer.relay(batch)

    def _usage_once(self, event: ServerSentEvent) -> ServerSentEvent:
        """OpenAI reports usage once, in a last chunk of its own (`choices: []`): Gloo's usage on its
        finish chunk is taken off there and sent that way at the end (see finish())."""
        if _is_usage_chunk(event.data):
            self.usage_sent = True
            return event
        try:
            chunk = json.loads(event.data)
        except (ValueError, RecursionError):
            return event
        if not isinstance(chunk, dict) or "usage" not in chunk or not chunk.get("choices"):
            return event
        del chunk["usage"]
        return event._replace(data=json.dumps(chunk))

    def heartbeat(self) -> None:
        self.writer.heartbeat()

    def finish(self, error: _RelayError | None, loop: _Relay) -> None:
        """The error event, or on /v1 the OpenAI ending: usage in a chunk of its own when asked, [DONE]."""
        tail = b""
        if error is not None and self.request.responses:
            accumulator = loop.stream.accumulator
            if not accumulator.done:  # (a response.failed or error event from upstream already said so)
                tail = error.typed_event(getattr(accumulator, "sequence", None))
        elif error is not None:
            tail = error.event()
        elif self.request.structured and (problem := _structured_problem(loop.stream, self.request)):
            tail = _RelayError.mid_stream("invalid_structured_output", problem).event()
        elif self.request.openai and not self.request.responses:
            accumulator = loop.stream.accumulator
            if self.request.include_usage and not self.usage_sent and accumulator.usage:
                usage_chunk = {"id": accumulator.id or "chatcmpl-" + uuid.uuid4().hex,
                               "object": "chat.completion.chunk", "created": int(time.time()),
                               "model": accumulator.model or "auto", "choices": [], "usage": accumulator.usage}
                tail += redact("data: " + json.dumps(usage_chunk) + "\n\n").encode()
            if not accumulator.done:
                tail += b"data: [DONE]\n\n"
        if not self.request.openai:
            tail += _outcome_event(loop, error)
        self.writer.end(tail)


def _outcome_event(loop: _Relay, error: _RelayError | None) -> bytes:
    """/api/stream's last event (`event: outcome`): the library's verdict on the stream, so the page
    decides nothing itself, with the usage, the model and the answer's cost where the catalog prices it.
    A stream the relay itself ended (idle, deadline, too slow) before any finish is `cut_short`."""
    stream = loop.stream
    verdict = stream.outcome.to_dict()
    if error is not None and verdict["kind"] == "streaming":
        verdict.update(kind="cut_short", complete=False, error_name=error.error_type, error_code=error.code,
                       message=error.message, retryable=True)
    accumulator = stream.accumulator
    model = accumulator.model
    data = {**verdict, "message": redact(verdict["message"]), "model": model, "usage": accumulator.usage,
            "cost_usd": loop.server.catalog.cost(model, accumulator.usage)}
    return b"event: outcome\ndata: " + json.dumps(data).encode() + b"\n\n"


class _AnswerSink:
    """The non-streaming answer: the stream is read whole (bounded) and answered as one JSON object."""

    heartbeats = False
    last_write = 0.0

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0

    def add(self, batch: list[ServerSentEvent]) -> None:
        self.size += sum(len(event.data) for event in batch)
        if self.size > self.limit:
            raise _RelayError.mid_stream("answer_too_large", f"the answer passed {self.limit} bytes "
                                         "(PROXY_MAX_ANSWER_BYTES); ask for less or stream it")

    def heartbeat(self) -> None:  # pragma: no cover - heartbeats are off
        pass


def _as_content(event: ServerSentEvent) -> ServerSentEvent:
    """A chunk of the forced structured-answer call, as OpenAI streams a response_format answer:
    the arguments' pieces as content deltas, finish_reason "stop" for "tool_calls"."""
    if '"tool_calls"' not in event.data:
        return event
    try:
        chunk = json.loads(event.data)
    except (ValueError, RecursionError):
        return event
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return event
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and isinstance(delta.get("tool_calls"), list):
            pieces = [call.get("function", {}).get("arguments") for call in delta.pop("tool_calls")
                      if isinstance(call, dict) and isinstance(call.get("function"), dict)]
            delta["content"] = "".join(piece for piece in pieces if isinstance(piece, str))
        if isinstance(choice, dict) and choice.get("finish_reason") == "tool_calls":
            choice["finish_reason"] = "stop"
    return event._replace(data=json.dumps(chunk))


def _structured_problem(stream: Any, request: _CompletionRequest) -> str | None:
    """Why a finished structured answer does not fit its schema (None when it does)."""
    if stream.outcome.kind != "finished":
        return None
    return _check_structured(_structured_text(stream.accumulator), request.schema)


def _is_usage_chunk(data: str) -> bool:
    """True for OpenAI's usage chunk: `choices: []` and a `usage` object."""
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)


class _ClientGone(Exception):
    """The client left (or stopped reading): nothing more can be written to it."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class _Relay:
    """One stream between its upstream and its client, driven by the relay loop.

    Whole events go to the sink as they arrive; the client's bytes wait in `out` while its socket
    is full (reading upstream pauses past a high-water mark); heartbeats, the upstream's idle
    time, the finish grace, the stream's deadline and a stuck client are timers on the loop's
    clock. The stream ends with the library's one verdict (`ChatStream.outcome`); what each
    event means is decided by the library (`ChatStream.read_batch()` folds them).
    """

    def __init__(self, handler: _Handler, stream: _Stream, *, keep_alive: bool = False) -> None:
        self.handler = handler
        self.server = handler.server
        self.config = handler.server.config
        self.exchange = handler.exchange
        self.client = handler.connection
        self.client_address = handler.client_address
        self.stream = stream
        self.sink: Any = None
        self.keep_alive = keep_alive  # the client's connection may serve another request after this one
        self.out = bytearray()  # written to the client as its socket takes it
        self.out_since = 0.0  # when `out` last made progress (or began to wait)
        self.last_upstream = time.monotonic()  # the last whole event (idleness counts from it)
        self.bytes_at_last_event = 0
        self.first_content: float | None = None
        self.paused = False  # upstream reads stopped: the client is not keeping up
        self.ending = False  # the last bytes are queued; the client side ends once they are written
        self.client_done = False
        self.upstream_done = False
        self.settle_until = 0.0
        self.error: _RelayError | None = None
        self.gone: str | None = None  # why the client went ("client_gone", "slow_client")
        self.finished: threading.Event | None = None  # collect(): set when the loop is done with both sockets
        self.collect = False  # the handler thread waits for the end and answers itself
        self.scheduled: float | None = None  # the time of this relay's entry in the loop's timer heap
        self.upstream_fd = -1  # both set when the loop adopts the relay (a closed socket forgets its fd)
        self.client_fd = -1
        self.upstream_registered = False
        self.client_events = selectors.EVENT_READ

    # -- writing to the client ----------------------------------------------

    def queue(self, data: bytes) -> None:
        """What the sink writes: queued, then sent as far as the client's socket takes it."""
        if not self.out:
            self.out_since = time.monotonic()
        self.out += data

    def flush(self) -> None:
        """Send what is queued; raises _ClientGone when the client's side is closed."""
        out = self.out
        while out:
            try:
                sent = self.client.send(out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                raise _ClientGone("client_gone") from None
            del out[:sent]
            self.out_since = time.monotonic()

    # -- the upstream ---------------------------------------------------------

    def pump(self, loop: _StreamLoop) -> None:
        """Read what the upstream has sent, relay whole events, end the stream when it ends."""
        stream = self.stream
        for _ in range(_READS_PER_TURN):
            try:
                batch = stream.read_batch()  # after a finish and its grace: None, a clean end
            except StreamError:
                return self.end(self.verdict())
            if batch is None:
                return self.end(self.verdict())
            if batch:
                self.last_upstream = time.monotonic()
                self.bytes_at_last_event = stream.bytes_read
                if self.first_content is None and stream.accumulator.first_token_at is not None:
                    self.first_content = self.last_upstream
                try:
                    self.sink.add(batch)
                except _RelayError as error:
                    return self.end(error)
                if len(self.out) > _OUT_HIGH_WATER:
                    self.paused = True
                    break
            elif not stream.buffered:
                break  # everything that has arrived is read: wait for the socket
        else:
            loop.ready.add(self)  # more is buffered: carry on in the next turn, after the others
        self.flush()

    def verdict(self) -> _RelayError | None:
        """None for a finished answer; else the one error that ends the stream, from `stream.outcome`."""
        outcome = self.stream.outcome
        if outcome.kind == "finished":
            return None
        if outcome.kind == "provider_error":
            return _RelayError.mid_stream("upstream_error", outcome.message,
                                          code=outcome.error_name or outcome.error_code)
        if self.server.cutting:
            return _RelayError.mid_stream("proxy_shutdown", "the proxy is shutting down and cut this stream; "
                                          "send the request again", status=503)
        kind, status = _CUT_SHORT.get(outcome.error_name, ("upstream_disconnected", 502))
        return _RelayError.mid_stream(kind, outcome.message or "the upstream failed", status=status, code=502)

    def idle_error(self) -> _RelayError:
        idle = self.config.upstream_idle_seconds
        if self.stream.bytes_read > self.bytes_at_last_event:
            # Bytes but no whole event: idleness counts from the last whole event, so an
            # upstream that trickles without ever finishing one still times out.
            return _RelayError.mid_stream("upstream_timeout", f"the upstream sent no complete event for {idle:g}s",
                                          status=504, code=504)
        return _RelayError.mid_stream("upstream_timeout", f"the upstream sent nothing for {idle:g}s",
                                      status=504, code=504)

    # -- the clock ------------------------------------------------------------

    def next_wake(self, now: float) -> float:
        """When this relay next needs the loop's attention, whatever its sockets do."""
        wakes = []
        stream = self.stream
        if not self.upstream_done:
            if stream.settling:
                wakes.append(self.settle_until)
            elif not self.ending:
                grace = stream.grace_remaining()
                if grace is not None:
                    wakes.append(now + grace)
                elif not self.paused:
                    wakes.append(self.last_upstream + self.config.upstream_idle_seconds)
                if stream.deadline is not None:
                    wakes.append(stream.accumulator.started + stream.deadline)
        if not self.client_done:
            if self.out:
                wakes.append(self.out_since + self.config.write_timeout_seconds)
            elif self.sink.heartbeats and not self.ending:
                wakes.append(self.sink.last_write + self.config.heartbeat_seconds)
        return min(wakes) if wakes else now + 3600.0

    def on_timer(self, loop: _StreamLoop, now: float) -> None:
        stream = self.stream
        if not self.client_done and self.out and now - self.out_since >= self.config.write_timeout_seconds:
            raise _ClientGone("slow_client")
        if not self.upstream_done:
            if stream.settling:
                if now >= self.settle_until:
                    stream.close()  # the body's end never came: the connection is not kept
                    loop.upstream_finished(self)
            elif not self.ending:
                grace = stream.grace_remaining()
                deadline_passed = stream.deadline is not None and now >= stream.accumulator.started + stream.deadline
                if (grace is not None and grace <= 0) or deadline_passed:
                    self.pump(loop)  # the library ends the stream: cleanly after a grace, or on its deadline
                elif (grace is None and not self.paused
                      and now - self.last_upstream >= self.config.upstream_idle_seconds):
                    self.end(self.idle_error())
        if (not self.client_done and not self.ending and not self.out and self.sink.heartbeats
                and now - self.sink.last_write >= self.config.heartbeat_seconds):
            self.sink.heartbeat()
            self.flush()

    # -- the end --------------------------------------------------------------

    def end(self, error: _RelayError | None) -> None:
        """The stream's verdict is in: record it, queue the ending; the loop finishes the rest."""
        if self.ending:
            return
        self.ending = True
        self.error = error
        self.exchange.outcome = error.outcome if error is not None else "complete"
        if not self.collect:
            self.sink.finish(error, self)
        self.flush()

    def client_gone(self, outcome: str) -> None:
        """The client left (or stopped reading): the upstream is closed at once."""
        self.gone = outcome
        self.ending = True
        self.out.clear()
        self.exchange.outcome = outcome
        self.keep_alive = False
        log.info("client went away mid-stream (%s); closing the upstream connection", outcome)

    def record(self) -> None:
        """Metrics and the log line's fields, once, when the client side is over."""
        exchange = self.exchange
        if not exchange.status:
            exchange.status = 499
        writer = getattr(self.sink, "writer", None)
        self.server.stream_done(exchange, self, None if self.gone else self.error, writer)


_READS_PER_TURN = 16  # reads of one upstream before the loop turns to the others
_OUT_HIGH_WATER = 64 * 1024  # bytes queued for a client before its upstream is no longer read
_SETTLE_SECONDS = 1.0  # after [DONE], how long the body's end may take before its connection is dropped
_LAG_WARNING_SECONDS = 1.0  # the loop logs (at most once a minute) when its timers fall this far behind


class _StreamLoop:
    """The streaming phase: one thread relays every stream once its response headers are sent.

    Handler threads read and check requests and open the upstream (with the library's
    transport and retries), then hand both sockets over and are free. The loop sleeps in the
    selector until a socket or the earliest timer wakes it; nothing polls.
    """

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._incoming: collections.deque[_Relay] = collections.deque()
        self._timers: list[tuple[float, int, _Relay]] = []
        self._order = itertools.count()
        self.ready: set[_Relay] = set()
        self.relays: set[_Relay] = set()
        self._stopping = False
        self._lag_logged = 0.0
        self.max_lag = 0.0  # the worst lag behind a timer seen, in seconds (for benchmarks)
        self._thread = threading.Thread(target=self._run, name="gloo-proxy-relay", daemon=True)
        self._thread.start()

    # -- from other threads ---------------------------------------------------

    def hand_over(self, relay: _Relay) -> None:
        """Give the loop a stream whose response has begun; from here the loop owns both sockets."""
        self._incoming.append(relay)
        self._wake()

    def collect(self, relay: _Relay) -> None:
        """Run a stream to its end in the loop and wait; the calling thread then answers itself."""
        relay.collect = True
        relay.finished = finished = threading.Event()
        self.hand_over(relay)
        finished.wait()

    def stop(self) -> None:
        """End the loop; any stream still in it is cut."""
        self._stopping = True
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending already) or closed (the loop has ended)

    # -- the loop -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._turn()
        finally:
            for relay in list(self.relays):
                self._abandon(relay)
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _turn(self) -> None:
        timeout: float | None = None
        if self.ready or self._incoming:
            timeout = 0.0
        elif self._timers:
            timeout = max(0.0, self._timers[0][0] - time.monotonic())
        for key, mask in self.selector.select(timeout):
            if key.data is None:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except OSError:
                    pass
                continue
            relay, upstream = key.data
            self._guard(relay, self._on_upstream if upstream else self._on_client, mask)
        while self._incoming:
            self._guard(self._incoming.popleft(), self._adopt, 0)
        if self.ready:
            ready, self.ready = self.ready, set()
            for relay in ready:
                if relay in self.relays and not relay.paused:
                    self._guard(relay, self._on_upstream, 0)
        self._fire_timers()

    def _guard(self, relay: _Relay, step: Callable[[_Relay, int], None], mask: int) -> None:
        """Run one step of one relay; whatever goes wrong ends that relay alone."""
        try:
            step(relay, mask)
        except _ClientGone as gone:
            relay.client_gone(gone.outcome)
            if relay.collect:
                self._drop_upstream(relay)  # the handler thread closes the stream
            else:
                self._close_stream(relay)
            self._client_finished(relay)
        except Exception:  # a process boundary: one broken stream never stops the others
            log.exception("unexpected error relaying a stream")
            self._abandon(relay)
            return
        if relay in self.relays:
            self._after(relay)

    def _adopt(self, relay: _Relay, mask: int) -> None:
        relay.stream.setblocking(False)
        relay.client.setblocking(False)
        relay.upstream_fd = relay.stream.fileno()
        relay.client_fd = relay.client.fileno()
        self.relays.add(relay)
        self.selector.register(relay.upstream_fd, selectors.EVENT_READ, (relay, True))
        relay.upstream_registered = True
        self.selector.register(relay.client_fd, selectors.EVENT_READ, (relay, False))
        if relay.stream.buffered:
            self.ready.add(relay)  # bytes read with the headers: no socket will say so

    def _on_upstream(self, relay: _Relay, mask: int) -> None:
        if relay.upstream_done or relay.paused:
            return
        if relay.stream.settling:
            if relay.stream.settle():
                self.upstream_finished(relay)
            return
        if not relay.ending:
            relay.pump(self)

    def _on_client(self, relay: _Relay, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._client_readable(relay)
        if relay.out:
            relay.flush()

    def _client_readable(self, relay: _Relay) -> None:
        """The client sent bytes or went away; bytes after the request are dropped (and end keep-alive)."""
        try:
            data = relay.client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            raise _ClientGone("client_gone") from None
        if not data:
            raise _ClientGone("client_gone")
        relay.keep_alive = False  # bytes after the request (pipelined or not) are never read as a request
        relay.exchange.extra_bytes += len(data)
        if relay.exchange.extra_bytes > self.server.config.max_body_bytes:
            raise _ClientGone("client_gone")

    def _after(self, relay: _Relay) -> None:
        """After any step: finish what is over, set the sockets' interest, schedule the next timer."""
        if relay.ending and not relay.upstream_done and not relay.collect:
            if not relay.stream.settling:
                self._close_stream(relay)  # ended (its connection is in the pool already), failed or cut
            elif not relay.settle_until:
                relay.settle_until = time.monotonic() + _SETTLE_SECONDS
        if relay.ending and not relay.out and not relay.client_done:
            if relay.collect and not relay.upstream_done:
                self._drop_upstream(relay)  # the handler thread takes the stream back and closes it
            self._client_finished(relay)
        if relay.client_done and relay.upstream_done:
            self._forget(relay)
            return
        if not relay.client_done:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if relay.out else 0)
            if want != relay.client_events:
                relay.client_events = want
                self.selector.modify(relay.client_fd, want, (relay, False))
        if relay.paused and len(relay.out) <= _OUT_HIGH_WATER // 2:
            relay.paused = False  # the client caught up: read the upstream again
            if relay.stream.buffered:
                self.ready.add(relay)
        if not relay.upstream_done:
            if relay.paused and relay.upstream_registered:
                self._drop_upstream(relay, done=False)
            elif not relay.paused and not relay.upstream_registered:
                self.selector.register(relay.upstream_fd, selectors.EVENT_READ, (relay, True))
                relay.upstream_registered = True
        self._schedule(relay)

    def _drop_upstream(self, relay: _Relay, *, done: bool = True) -> None:
        if relay.upstream_registered:
            relay.upstream_registered = False
            self._unregister(relay.upstream_fd)
        if done:
            relay.upstream_done = True

    def _close_stream(self, relay: _Relay) -> None:
        if not relay.upstream_done:
            self._drop_upstream(relay, done=False)
            relay.stream.close()
            self.upstream_finished(relay)

    def upstream_finished(self, relay: _Relay) -> None:
        """The upstream side is over (closed, or its connection back in the pool): the slot is free."""
        if relay.upstream_done:
            return
        self._drop_upstream(relay)
        if not relay.collect:
            self.server.end_stream(relay.stream)

    def _client_finished(self, relay: _Relay) -> None:
        """The client side is over: log the request, then keep the connection for another or close it."""
        relay.client_done = True
        self._unregister(relay.client_fd)
        relay.record()
        if relay.finished is not None:
            relay.finished.set()  # the handler thread answers (or closes) and logs
            return
        relay.handler.log_request_done()
        keep = relay.keep_alive and not relay.gone and not self.server.draining
        self.server.release_connection(relay.handler, keep_alive=keep)

    def _unregister(self, fd: int) -> None:
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def _forget(self, relay: _Relay) -> None:
        """Both sides are over: let the relay go (its references cut, so no garbage cycle waits for the GC)."""
        self.relays.discard(relay)
        relay.sink = None  # (its writer writes through relay.queue: a cycle)

    def _abandon(self, relay: _Relay) -> None:
        """Cut a relay whatever state it is in (a bug, or the loop stopping)."""
        self.relays.discard(relay)
        if not relay.upstream_done:
            self._drop_upstream(relay)
            relay.stream.close()
            if not relay.collect:
                self.server.end_stream(relay.stream)
        if not relay.client_done:
            relay.client_done = True
            relay.gone = relay.gone or "client_gone"
            relay.exchange.outcome = relay.exchange.outcome or "proxy_error"
            if relay.client_fd >= 0:
                self._unregister(relay.client_fd)
            if relay.finished is not None:
                relay.finished.set()
            else:
                relay.record()
                relay.handler.log_request_done()
                self.server.release_connection(relay.handler, keep_alive=False)
        relay.sink = None

    # -- timers ---------------------------------------------------------------

    def _schedule(self, relay: _Relay) -> None:
        wake = relay.next_wake(time.monotonic())
        if relay.scheduled is None or wake < relay.scheduled:
            relay.scheduled = wake
            heapq.heappush(self._timers, (wake, next(self._order), relay))

    def _fire_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            when, _, relay = heapq.heappop(timers)
            if relay.scheduled != when or relay not in self.relays:
                continue  # superseded by an earlier entry, or the relay is over
            relay.scheduled = None
            lag = now - when
            if lag > self.max_lag:
                self.max_lag = lag
            if lag > _LAG_WARNING_SECONDS and now - self._lag_logged > 60:
                self._lag_logged = now
                log.warning("the relay loop is %.1fs behind its timers with %d streams: the machine is "
                            "overloaded (see PROXY_MAX_STREAMS)", lag, len(self.relays))
            if relay.next_wake(now) > now:
                self._schedule(relay)  # its deadlines moved on since this entry was made
                continue
            self._guard(relay, lambda r, mask: r.on_timer(self, now), 0)


# How a stream cut short is told to the client, by the library's failure (StreamOutcome.error_name).
_CUT_SHORT = {
    "StreamTimeoutError": ("upstream_timeout", 504),
    "EventTooLargeError": ("upstream_event_too_large", 502),
    "ConnectionLostError": ("upstream_disconnected", 502),
}


# What a page's script may read of an answer's headers.
_EXPOSED_HEADERS = "Retry-After, X-Request-Id, X-Gloo-Dropped-Fields, X-Gloo-Translated"


class _Origins:
    """Which pages may call the API: PROXY_CORS_ORIGIN, `*`, and the proxy's own page (same origin)."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.listed = server.config.cors_origins
        self.any = "*" in self.listed

    def allowed(self, origin: str, host: str, peer: str) -> bool:
        return self.any or origin in self.listed or self.same_origin(origin, host, peer)

    def cors_headers(self, origin: str) -> list[tuple[str, str]]:
        """The CORS answer headers for a request with this Origin."""
        if origin in self.listed:  # (the proxy's own page is same-origin: it needs no CORS header)
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                    ("Access-Control-Expose-Headers", _EXPOSED_HEADERS)]
        if self.any:  # any page, and never with credentials (no Access-Control-Allow-Credentials)
            return [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", _EXPOSED_HEADERS)]
        return [("Vary", "Origin")]

    def same_origin(self, origin: str, host: str, peer: str) -> bool:
        """The page the proxy serves posts to the proxy: Origin is the proxy's own address."""
        host = host.strip().lower()
        try:
            parts = urllib.parse.urlsplit(origin.strip().lower())
            hostname = parts.hostname or ""
        except ValueError:  # e.g. an unbalanced "[": not an origin at all
            return False
        if not host or parts.scheme not in ("http", "https") or parts.netloc != host:
            return False
        server = self.server
        if server.is_trusted(peer) or hostname in server.config.allowed_hosts:
            return True
        # Guard against DNS rebinding, whatever address is bound (0.0.0.0 and :: too): only names
        # that no one else can point here count as "us"; other names go in PROXY_ALLOWED_HOSTS.
        return _is_loopback_name(hostname) or (not server.loopback_only and _is_address_literal(hostname))


# ---------------------------------------------------------------------------
# The request handler
# ---------------------------------------------------------------------------


@dataclass
class _Exchange:
    """One request's record, from its first byte to its log line."""

    started: float
    status: int = 0
    outcome: str = ""
    route: str = "other"
    path: str = ""
    body_length: int = 0
    body_read: bool = False
    continue_sent: bool = False
    static_file: str = ""
    extra_bytes: int = 0  # bytes the client sent after its request, read and dropped
    extra: dict[str, Any] = field(default_factory=dict)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # X-Request-Id, and in the log line
    headers: list[tuple[str, str]] = field(default_factory=list)  # more response headers (the field policy's)


@dataclass(frozen=True)
class _Route:
    """A fixed route: its methods, the handler method, and the guards in front of it."""

    methods: tuple[str, ...]
    handler: Callable[[_Handler], None]
    api: bool = False  # CORS, preflight, the client key and the rate limit
    key: bool = False  # the client key only


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # never answer in HTTP/0.9 style (a body with no status line)
    server_version = "gloo-stream-proxy/" + gloo_stream.__version__
    sys_version = ""
    disable_nagle_algorithm = True  # small event writes must leave at once
    server: ProxyServer
    routes: dict[str, _Route] = {}  # filled in below the class
    exchange: _Exchange

    # -- connection and request lifecycle ---------------------------------

    relay: _Relay | None = None  # set when a stream was handed to the relay loop: it owns the connection now

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        resumed = self.server.connections.take(self.connection)  # None for a new connection
        if resumed is not None:  # a kept-alive connection back from the relay loop, with its buffered bytes
            self._reader, self.rfile = resumed
        else:
            self._reader = _DeadlineReader(self.connection)
            self.rfile = io.BufferedReader(self._reader, 64 * 1024)
        self.server.connections.opened(self.connection)

    def finish(self) -> None:
        if self.relay is not None:
            return  # the relay loop writes the rest and then closes or keeps the connection
        self.server.connections.closed(self.connection)
        try:
            super().finish()
        except OSError:
            pass  # the client is gone; nothing is left to flush

    def handle_one_request(self) -> None:
        self.exchange = _Exchange(time.monotonic())
        self.command, self.path, self.request_version = "", "", "HTTP/1.1"
        self.headers = None  # type: ignore[assignment]
        if not self._read_request_line():
            self.close_connection = True
            return
        self.exchange.started = time.monotonic()
        try:
            try:
                if self._parse_head():
                    self._dispatch()
            except _RelayError as error:
                self._answer_error(error)
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError) as exc:
            self.close_connection = True
            self.exchange.outcome = self.exchange.outcome or (
                "timeout" if isinstance(exc, socket.timeout) else "client_gone")
            self.exchange.status = self.exchange.status or 499
        except Exception:  # a process boundary: never a stack trace to the client
            log.exception("unexpected error handling %s %s", self.command, self.exchange.route)
            if not self.exchange.status:
                try:
                    self._answer_error(_RelayError(500, "internal error", error_type="server_error", close=True))
                except OSError:
                    pass
            self.close_connection = True
        finally:
            if self.exchange.status and self.relay is None:
                self._log_request()

    def _read_request_line(self) -> bool:
        self._reader.deadline = time.monotonic() + self.server.config.request_timeout_seconds
        self.server.mark_idle(self.connection, True)
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:  # idle keep-alive connection timed out, or the client vanished
            return False
        finally:
            self.server.mark_idle(self.connection, False)
        return bool(self.raw_requestline)

    def _parse_head(self) -> bool:
        """The request line and headers, vetted; False when http.server already answered."""
        if len(self.raw_requestline) > 65536:
            self.requestline = ""
            raise _RelayError(414, "request line too long", close=True)
        if b"\r" in self.raw_requestline.rstrip(b"\r\n"):
            raise _RelayError(400, "the request line holds a bare CR", close=True)
        recorder = _HeaderRecorder(self.rfile)
        self.rfile = recorder  # type: ignore[assignment]
        try:
            if not self.parse_request():
                return False
        except socket.timeout:
            raise _RelayError(408, "request headers took too long", close=True) from None
        finally:
            self.rfile = recorder.file
        if recorder.problem:
            self.headers = None  # type: ignore[assignment]  # none of them is believed
            raise _RelayError(400, recorder.problem, close=True)
        self._check_framing()
        return True

    def _check_framing(self) -> None:
        """One way to read the body, and a Host on HTTP/1.1 (RFC 9112 3.2, 6.1-6.3)."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1 or (not hosts and self.request_version != "HTTP/1.0"):
            raise _RelayError(400, "send exactly one Host header", close=True)
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") is not None:
            if lengths:
                raise _RelayError(400, "Content-Length and Transfer-Encoding together are not allowed", close=True)
            raise _RelayError(411, "send the body with a Content-Length (chunked bodies are not accepted)",
                              close=True)
        if len(lengths) > 1:
            raise _RelayError(400, "send exactly one Content-Length", close=True)
        raw = lengths[0].strip() if lengths else "0"
        if not raw.isdigit() or not raw.isascii():
            raise _RelayError(400, "Content-Length must be a non-negative integer", close=True)
        if len(raw) > 15:  # no body is that large; int() of thousands of digits is slow or refused
            raise _RelayError(413, "the Content-Length is beyond any body this proxy accepts", close=True)
        self.exchange.body_length = int(raw)

    def handle_expect_100(self) -> bool:
        return True  # "100 Continue" only once the body is wanted (_read_body), never before a 4xx

    def _dispatch(self) -> None:
        try:
            path = urllib.parse.urlsplit(self.path).path or "/"
        except ValueError:
            raise _RelayError(400, "the request target is not a valid URL", close=True) from None
        self.exchange.path = path
        if self.server.draining:
            raise _RelayError(503, "the proxy is shutting down", error_type="server_error",
                              headers={"Retry-After": "1"}, close=True)
        route = self.routes.get(path)
        if route is None and path.startswith("/v1/responses/"):
            route = _RETRIEVE_ROUTE
        elif route is None and path.startswith("/v1/models/"):
            route = _MODEL_ROUTE
        if route is None:
            static = self.server.site.find(path)
            if static is not None:
                self.exchange.static_file = static
                route = _STATIC_ROUTE
        self.exchange.route = _ROUTE_NAMES.get(id(route), path if route is not None else "other")
        if route is None:
            raise _RelayError(404, f"no route for {self.command} {path}", code="not_found")
        if self.command not in route.methods:
            raise _RelayError(405, f"{self.command} is not allowed on {path}", code="method_not_allowed",
                              headers={"Allow": ", ".join(route.methods)})
        if route.api:
            self._check_origin()
            if self.command == "OPTIONS":
                self._preflight(route.methods)
                return
        if route.api or route.key:
            self.server.check_api_key(self.headers.get("Authorization") or "", self.client_ip)
        if route.api:
            self.server.check_rate_limit(self.client_ip)
        route.handler(self)

    # -- responses ----------------------------------------------------------

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, header limits) as JSON too."""
        self._answer_error(_RelayError(code, message or self.responses.get(code, ("error",))[0], close=True))

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # one line per request is written by _log_request when the request ends

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http.server: " + format, *args)

    def _start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self._discard_unread_body()
        self.exchange.status = status
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        self.send_header("Server", self.server_version)
        self.send_header("X-Request-Id", self.exchange.request_id)
        for name, value in list(headers) + self.exchange.headers + self._cors_headers():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send_body(self, status: int, body: bytes, content_type: str,
                   headers: Sequence[tuple[str, str]] = ()) -> None:
        all_headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store"), *headers]
        self.connection.settimeout(self.server.config.write_timeout_seconds)
        self._start(status, all_headers)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: Sequence[tuple[str, str]] = ()) -> None:
        self._send_body(status, json.dumps(payload).encode(), "application/json", headers)

    def _answer_error(self, error: _RelayError) -> None:
        if error.close:
            self.close_connection = True
        self.exchange.outcome = self.exchange.outcome or error.outcome
        self.exchange.extra.setdefault("error", error.message[:120])
        self._send_json(error.status, error.body(), list(error.headers.items()))

    _DISCARD_LIMIT = 64 * 1024

    def _discard_unread_body(self) -> None:
        """A body left unread would be taken for the next request: read a small one, else close."""
        exchange = self.exchange
        if exchange.body_read or self.close_connection or self.headers is None or not exchange.body_length:
            return
        exchange.body_read = True
        waiting = (self.headers.get("Expect") or "").lower() == "100-continue" and not exchange.continue_sent
        if waiting or exchange.body_length > self._DISCARD_LIMIT:
            self.close_connection = True  # (a client waiting for 100 Continue may or may not send it)
            return
        try:
            if len(self.rfile.read(exchange.body_length)) < exchange.body_length:
                self.close_connection = True
        except OSError:
            self.close_connection = True

    # -- checks -------------------------------------------------------------

    def _cors_headers(self) -> list[tuple[str, str]]:
        origin = self.headers.get("Origin") if self.headers is not None else None
        return self.server.origins.cors_headers(origin) if origin else []

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and not self.server.origins.allowed(origin, self.headers.get("Host") or "",
                                                                  self.client_address[0]):
            raise _RelayError(403, "this origin is not allowed (set PROXY_CORS_ORIGIN)", code="origin_not_allowed")

    def _preflight(self, allowed: Sequence[str]) -> None:
        headers = [("Allow", ", ".join(allowed)), ("Content-Length", "0")]
        if self.headers.get("Origin"):
            headers += [("Access-Control-Allow-Methods", ", ".join(allowed)),
                        ("Access-Control-Allow-Headers", "Content-Type, Authorization"),
                        ("Access-Control-Max-Age", "600")]
        self.exchange.outcome = "preflight"
        self.connection.settimeout(self.server.config.write_timeout_seconds)
        self._start(204, headers)

    @property
    def client_ip(self) -> str:
        """The client's address: the peer, or from X-Forwarded-For when the peer is a trusted proxy."""
        return self.server.client_ip(self.client_address[0], self.headers.get_all("X-Forwarded-For") or [])

    # -- routes -------------------------------------------------------------

    def _health(self) -> None:
        self._send_json(200, self.server.health())

    def _metrics(self) -> None:
        self._send_body(200, self.server.metrics.render(self.server.active_streams).encode(),
                        "text/plain; version=0.0.4; charset=utf-8")

    def _models(self) -> None:
        """GET /v1/models: `auto` (Gloo's auto-routing) and the upstream catalog's models."""
        models = self.server.catalog.fetch()
        headers = () if models is not None else (("X-Gloo-Catalog", "unavailable"),)
        self._send_json(200, {"object": "list", "data": [_AUTO_MODEL] + [_model_object(m) for m in models or ()]},
                        headers)

    def _model(self) -> None:
        """GET /v1/models/{id}: one model of the catalog (or `auto`), else 404 model_not_found."""
        model_id = urllib.parse.unquote(self.exchange.path[len("/v1/models/"):])
        if model_id == "auto":
            self._send_json(200, _AUTO_MODEL)
            return
        models = self.server.catalog.fetch()
        found = next((model for model in models or () if model.id == model_id), None)
        if found is None:
            why = "is not in the model catalog" if models is not None else "cannot be looked up (no catalog now)"
            raise _RelayError(404, f"the model {model_id[:100]!r} {why}: GET /v1/models lists them",
                              code="model_not_found")
        self._send_json(200, _model_object(found))

    def _static(self) -> None:
        self.exchange.outcome = "static"
        host = self.headers.get("Host") or ""
        body, content_type = self.server.site.body(self.exchange.static_file,
                                                   lambda: self.server.fallback_page(host))
        self._send_body(200, body, content_type, _SECURITY_HEADERS)

    def _read_body(self) -> bytes:
        config, exchange = self.server.config, self.exchange
        if not self.headers.get_all("Content-Length"):
            raise _RelayError(411, "send exactly one Content-Length", close=True)
        if exchange.body_length > config.max_body_bytes:
            raise _RelayError(413, f"the body is larger than {config.max_body_bytes} bytes", close=True)
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _RelayError(415, "send the body as Content-Type: application/json")
        exchange.body_read = True  # from here on, whatever happens, the body is not left for the next request
        if (self.headers.get("Expect") or "").lower() == "100-continue" and self.request_version != "HTTP/1.0":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            exchange.continue_sent = True
        try:
            raw = self.rfile.read(exchange.body_length)
        except socket.timeout:
            raise _RelayError(408, "the request body took too long", close=True) from None
        if len(raw) < exchange.body_length:
            raise _RelayError(400, "the body is shorter than its Content-Length", close=True)
        return raw

    def _completion(self, *, openai: bool, responses: bool = False) -> None:
        body = _parse_json_body(self._read_body())
        if not openai and body.get("api") not in (None, "chat", "responses"):
            raise _RelayError(400, 'api must be "chat" (Completions V2) or "responses" (the Responses API)',
                              code="invalid_field")
        policy = self.server.config.unknown_fields
        if responses or body.get("api") == "responses":
            request = _responses_request(body, openai=openai, policy=policy)
        else:
            body.pop("api", None)
            request = _completion_request(body, openai=openai, policy=policy)
        if request.dropped:
            names = ", ".join(request.dropped)
            self.exchange.headers.append(("X-Gloo-Dropped-Fields", names))
            self.exchange.extra["dropped"] = names
        if request.translated:
            self.exchange.headers.append(("X-Gloo-Translated", ", ".join(request.translated)))
        self.exchange.extra["prompt_chars"] = request.prompt_chars
        stream = self.server.open_stream(request)
        relay = None
        try:
            if request.stream:
                relay = self._relay(stream, request)
            else:
                self._collect(stream, request)
        finally:
            if relay is None:
                self.server.end_stream(stream)
        self.relay = relay  # this thread's part is over: the loop takes both sockets when it returns

    def _relay(self, stream: _Stream, request: _CompletionRequest) -> _Relay:
        """Send the stream's headers; the relay loop then relays whole events as they arrive."""
        chunked = self.request_version != "HTTP/1.0"
        self.close_connection = self.close_connection or not chunked
        self.connection.settimeout(self.server.config.write_timeout_seconds)
        self._start(200, [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"),
                          ("X-Accel-Buffering", "no")] + ([("Transfer-Encoding", "chunked")] if chunked else []))
        relay = _Relay(self, stream, keep_alive=not self.close_connection)
        relay.sink = _StreamSink(_EventWriter(relay.queue, chunked=chunked), request)
        self.close_connection = True  # for this thread: the loop decides whether the connection is kept
        return relay

    def _collect(self, stream: Any, request: _CompletionRequest) -> None:
        """The OpenAI non-streaming answer: the stream read whole (bounded), answered as one chat.completion
        (or, for the Responses API, as the final response object)."""
        relay = _Relay(self, stream)
        relay.sink = _AnswerSink(self.server.config.max_answer_bytes)
        self.server.relays.collect(relay)
        if relay.gone is not None:
            self.close_connection = True
            return  # the client left: the upstream is closed, there is no one to answer
        stream.setblocking(True)  # closing it may wait a moment for the body's end: the connection is kept
        error = relay.error
        if error is not None:
            raise _RelayError(504 if error.status == 504 else 502, f"the upstream failed mid-answer: {error.message}",
                              error_type="upstream_error", code=error.code, outcome=error.outcome)
        if isinstance(stream, ResponseStream):
            self._send_json(200, _response_object(stream))
        elif request.structured:
            result = stream.result()
            _structured_result(result, stream.accumulator, request.schema)  # the library's own reading
            if result.error is not None:
                raise _RelayError(502, result.error + "; ask again", error_type="upstream_error",
                                  code="invalid_structured_output", outcome="invalid_structured_output")
            self._send_json(200, _chat_completion(result))
        else:
            self._send_json(200, _chat_completion(stream.result()))

    def _retrieve_response(self) -> None:
        """GET /v1/responses/{id}: passed to the upstream, which may or may not keep responses."""
        response_id = self.exchange.path[len("/v1/responses/"):]
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,200}", response_id):
            raise _RelayError(400, "a response id is letters, digits, '_' and '-' (such as resp_123)",
                              code="invalid_id")
        try:
            answer = self.server.client.retrieve_response(response_id)
        except gloo_stream.NotFoundError:
            raise _RelayError(404, f"the upstream keeps no response {response_id}: it may not store responses "
                                   "(send the conversation as input instead of previous_response_id)",
                              code="not_found") from None
        except (APIStatusError, TokenError, APIConnectionError, UnexpectedResponseError, ConfigurationError) as exc:
            kind, error = _from_upstream(exc)
            self.server.metrics.upstream_error(kind)
            raise error from None
        self.exchange.outcome = "retrieved"
        self._send_json(200, answer)

    def log_request_done(self) -> None:
        """The request's one log line (the relay loop calls it when a handed-over stream ends)."""
        self._log_request()

    def _log_request(self) -> None:
        client = self.client_ip if self.headers is not None else self.client_address[0]
        self.server.request_done(self.exchange, client, self.command)


_STATIC_ROUTE = _Route(("GET", "HEAD"), _Handler._static)
_RETRIEVE_ROUTE = _Route(("GET", "OPTIONS"), _Handler._retrieve_response, api=True)
_MODEL_ROUTE = _Route(("GET", "OPTIONS"), _Handler._model, api=True)
# The routes whose paths carry a value, by the name the metrics and the log use.
_ROUTE_NAMES = {id(_STATIC_ROUTE): "static", id(_RETRIEVE_ROUTE): "/v1/responses/{id}",
                id(_MODEL_ROUTE): "/v1/models/{id}"}
_Handler.routes = {
    "/health": _Route(("GET",), _Handler._health),
    "/metrics": _Route(("GET",), _Handler._metrics, key=True),
    "/api/stream": _Route(("POST", "OPTIONS"), lambda handler: handler._completion(openai=False), api=True),
    "/v1/chat/completions": _Route(("POST", "OPTIONS"), lambda handler: handler._completion(openai=True), api=True),
    "/v1/responses": _Route(("POST", "OPTIONS"), lambda handler: handler._completion(openai=True, responses=True),
                            api=True),
    "/v1/models": _Route(("GET", "OPTIONS"), _Handler._models, api=True),
}


def _response_object(stream: ResponseStream) -> dict[str, Any]:
    """A Responses API answer whole: the final response object as the upstream sent it (else one built)."""
    final = stream.accumulator.response
    if final is not None:
        return final
    result = stream.result()
    return {"id": result.id, "object": "response", "created_at": int(time.time()), "status": result.status,
            "model": result.model, "output": result.output, "usage": result.usage,
            "incomplete_details": {"reason": result.incomplete_reason} if result.incomplete_reason else None}


_ROUTING_METADATA = ("provider", "model_family", "routing_mechanism", "routing_tier", "routing_confidence",
                     "tradition", "sources_returned")


def _chat_completion(result: Any) -> dict[str, Any]:
    """A ChatResult as OpenAI's chat.completion object, with Gloo's routing metadata as its chunks carry it."""
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
    if result.tool_calls:
        message["tool_calls"] = [{key: call[key] for key in ("id", "type", "function")} for call in result.tool_calls]
        if not result.text:
            message["content"] = None  # as OpenAI answers a tool call
    answer = {
        "id": result.id or "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model or "auto",
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
        "usage": result.usage,
    }
    answer.update({key: getattr(result, key) for key in _ROUTING_METADATA if getattr(result, key, None) is not None})
    sources = getattr(result, "sources", None)
    if sources:
        answer["citations"] = sources
    return answer


_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPT_PAUSE = 0.25  # seconds without accepting after running out of file descriptors


def _raise_open_files_limit() -> None:
    """The soft open-files limit up to the hard one: each stream is two sockets, and 1,024 is common."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = min(hard if hard != resource.RLIM_INFINITY else 65536, 65536)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError):
        pass  # keep what the system gave


def _accept_queue(sock: socket.socket) -> tuple[int, int]:
    """(connections waiting to be accepted, the queue's size) of a listening socket; (0, 0) where unknown.

    Linux reports both in TCP_INFO (tcpi_unacked and tcpi_sacked, for a listening socket).
    """
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return 0, 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 104)
        fields = struct.unpack_from("8B6I", info)
    except (OSError, struct.error):
        return 0, 0
    return fields[12], fields[13]


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class _Workers:
    """Threads for connections, each kept a moment for the next one: under load a thread's start costs
    a fifth of a stream start's CPU, and the accept loop waits for every thread it starts. An idle
    thread ends after `idle_seconds`, so a quiet proxy holds none."""

    def __init__(self, *, idle_seconds: float = 2.0, keep: int = 64, name: str = "gloo-proxy-connection") -> None:
        self.idle_seconds = idle_seconds
        self.keep = keep  # idle threads kept at most
        self.name = name
        self.busy = 0
        self._idle = 0
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Condition()
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` on an idle thread, or on a new one; raises RuntimeError when no thread can be had."""
        with self._lock:
            self.busy += 1
            if self._idle > len(self._jobs):
                self._jobs.append(job)
                self._lock.notify()
                return
        try:
            threading.Thread(target=self._work, args=(job,), name=self.name, daemon=True).start()
        except RuntimeError:
            with self._lock:
                self.busy -= 1
            raise

    def close(self) -> None:
        """Idle threads end now, busy ones when their job does."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _work(self, job: Callable[[], None]) -> None:
        while True:
            try:
                job()
            finally:
                with self._lock:
                    self.busy -= 1
            with self._lock:
                if self._closed or self._idle >= self.keep:
                    return
                self._idle += 1
                try:
                    deadline = time.monotonic() + self.idle_seconds
                    while not self._jobs:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 or self._closed:
                            return
                        self._lock.wait(remaining)
                    job = self._jobs.popleft()
                finally:
                    self._idle -= 1


def _client_options(config: Any) -> dict[str, Any]:
    """GlooClient options from the config: the relay's retries never multiply the caller's."""
    options: dict[str, Any] = dict(
        client_id=config.client_id, client_secret=config.client_secret, api_key=config.upstream_api_key,
        token_url=config.token_url, api_url=config.api_url, endpoint=config.endpoint,
        models_url=config.models_url, read_timeout=config.upstream_idle_seconds,
        max_retries=config.upstream_retries, max_event_bytes=config.max_event_bytes,
        retry_rate_limited=False,  # a 429 goes straight back to the client with its Retry-After
        max_retry_wait=2.0,  # a 503 asking for longer goes back too, with its Retry-After: the client decides
    )
    return options


class _StaticSite:
    """The page's files: the regular files directly in the web root when the relay started (no links,
    no dot files), never any other path; the built-in page at `/` when there is no index.html."""

    def __init__(self, root: str) -> None:
        self.files = self._scan(root)

    @staticmethod
    def _scan(root: str) -> dict[str, str]:
        files: dict[str, str] = {}
        try:
            names = os.listdir(root)
        except OSError:
            return files
        real_root = os.path.realpath(root)
        for name in names:
            path = os.path.join(root, name)
            if name.startswith(".") or os.path.islink(path) or not os.path.isfile(path):
                continue
            if os.path.dirname(os.path.realpath(path)) != real_root:
                continue
            files["/" + name] = path
        if "/index.html" in files:
            files["/"] = files["/index.html"]
        return files

    def find(self, path: str) -> str | None:
        """The file for a URL path, only ever one found by the startup scan."""
        found = self.files.get(path)
        if found is None and path == "/":
            return _FALLBACK_PAGE_MARKER
        return found

    def body(self, file_path: str, fallback: Callable[[], bytes]) -> tuple[bytes, str]:
        """A page file's bytes and type (`fallback()`'s page when web/ is missing); 404 if it went away."""
        if file_path == _FALLBACK_PAGE_MARKER:
            return fallback(), "text/html; charset=utf-8"
        try:
            with open(file_path, "rb") as handle:
                body = handle.read()
        except OSError:
            raise _RelayError(404, "not found", code="not_found") from None
        return body, _STATIC_TYPES.get(os.path.splitext(file_path)[1].lower(), "application/octet-stream")


class _Catalog:
    """The upstream's model catalog, for /v1/models and the cost of each answer.

    Fetched through the library (which caches it for its TTL) at the warm start and by GET /v1/models
    (the page asks for it as it loads); the relay loop only reads what is already here (`cost()`), never
    waits for a fetch, and a stream never causes one.
    """

    def __init__(self, client: GlooClient) -> None:
        self.client = client
        self.models: dict[str, ModelInfo] = {}
        self.problem: str | None = None  # why the last fetch failed (logged once per distinct reason)

    def fetch(self) -> list[ModelInfo] | None:
        """The catalog's models, or None when it cannot be had now (the reason is in `problem`)."""
        try:
            models = self.client.models()
        except (gloo_stream.GlooError, OSError) as exc:
            problem = redact(str(exc))
            if problem != self.problem:
                log.warning("model catalog unavailable (%s): /v1/models lists only auto, answers carry no cost",
                            problem)
            self.problem = problem
            return None
        self.models, self.problem = {model.id: model for model in models}, None
        return models

    def cost(self, model: str | None, usage: Any) -> float | None:
        """An answer's cost in USD from the catalog's prices, or None when unknown."""
        info = self.models.get(model or "")
        return info.cost(usage) if info is not None else None


def _model_object(model: ModelInfo) -> dict[str, Any]:
    """A catalog entry as an OpenAI model object, with what the catalog says beside the four fields."""
    extra = {key: value for key, value in (
        ("name", model.name), ("context_window", model.context_window),
        ("max_output_tokens", model.max_output_tokens), ("capabilities", list(model.capabilities) or None),
        ("pricing", {"input": model.input_price, "output": model.output_price, "unit": "USD per 1M tokens"}
         if model.input_price is not None or model.output_price is not None else None),
    ) if value is not None}
    return {"id": model.id, "object": "model", "created": 0, "owned_by": model.family or "gloo", **extra}


_AUTO_MODEL = {"id": "auto", "object": "model", "created": 0, "owned_by": "gloo",
               "name": "Gloo AI Core (auto-routing: Gloo picks the model for each question)"}


class _StreamSlots:
    """The streams in flight: at most `limit`, each tracked so a shutdown can cut it. A lock of its own."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._tracked: set[_Stream] = set()
        self._changed = threading.Condition()

    def acquire(self) -> bool:
        with self._changed:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        with self._changed:
            self.active -= 1
            self._changed.notify_all()

    def track(self, stream: _Stream) -> None:
        with self._changed:
            self._tracked.add(stream)

    def untrack(self, stream: _Stream) -> bool:
        """Forget a tracked stream; False when it was not tracked (already ended)."""
        with self._changed:
            if stream not in self._tracked:
                return False
            self._tracked.discard(stream)
            return True

    def tracked(self) -> list[_Stream]:
        with self._changed:
            return list(self._tracked)

    def wait_empty(self, deadline: float, *, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Wait until no stream is in flight, the deadline passes or `give_up()`; True when none is."""
        with self._changed:
            while self.active > 0 and not give_up():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.1))  # short waits: give_up() is seen at once
            return self.active == 0


class _Connections:
    """The client connections: how many are admitted (in all, and from each address), which wait
    idle between requests, and the readers of those the relay loop hands back. A lock of its own."""

    def __init__(self, limit: int, per_client: int) -> None:
        self.limit, self.per_client = limit, per_client
        self.admitted = 0  # admitted by admit(), released by release()
        self._by_address: dict[str, int] = {}  # admitted connections by client address (trusted proxies not counted)
        self._address_of: dict[Any, str] = {}
        self._idle: dict[socket.socket, bool] = {}  # open connections: idle between requests?
        self._parked: dict[socket.socket, tuple[_DeadlineReader, Any]] = {}
        self._lock = threading.Lock()

    def admit(self, request: Any, address: str, *, counted: bool) -> str | None:
        """Take a slot for a new connection: None, or why not ("overloaded", "too_many_from_you")."""
        with self._lock:
            mine = self._by_address.get(address, 0) if counted else 0
            if self.admitted >= self.limit:
                return "overloaded"
            if mine >= self.per_client:
                return "too_many_from_you"
            self.admitted += 1
            if counted:
                self._by_address[address] = mine + 1
                self._address_of[request] = address
            return None

    def release(self, request: Any) -> None:
        with self._lock:
            self.admitted -= 1
            address = self._address_of.pop(request, None)
            if address is not None:
                left = self._by_address.get(address, 1) - 1
                if left > 0:
                    self._by_address[address] = left
                else:
                    self._by_address.pop(address, None)

    def from_address(self, address: str) -> int:
        with self._lock:
            return self._by_address.get(address, 0)

    def opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._idle[sock] = False

    def closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._idle.pop(sock, None)

    def mark_idle(self, sock: socket.socket, idle: bool) -> None:
        with self._lock:
            if sock in self._idle:
                self._idle[sock] = idle

    def open(self, *, idle_only: bool) -> list[socket.socket]:
        with self._lock:
            return [sock for sock, idle in self._idle.items() if idle or not idle_only]

    def park(self, sock: socket.socket, reader: tuple[_DeadlineReader, Any]) -> None:
        """Keep a kept-alive connection's reader (and its buffered bytes) for the thread that takes it next."""
        with self._lock:
            self._parked[sock] = reader

    def take(self, sock: socket.socket) -> tuple[_DeadlineReader, Any] | None:
        with self._lock:
            return self._parked.pop(sock, None)


class ProxyServer(ThreadingHTTPServer):
    """The relay: a threading HTTP server bound on construction.

    `with ProxyServer(config) as proxy:` serves in a background thread at `proxy.url`;
    `serve_forever()` serves in the calling thread; `drain()` stops it gracefully.
    `offline=True` marks a relay of the built-in simulator (its markers are capped).
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the listen backlog: bursts of hundreds of connections wait, not fail

    def __init__(self, config: ProxyConfig | None = None, *, client: GlooClient | None = None,
                 log_handler: logging.Handler | None = None, offline: bool = False) -> None:
        self.config = config or ProxyConfig()
        self.config.validate()
        self.client = client or GlooClient(**_client_options(self.config))
        self.catalog = _Catalog(self.client)
        self.offline = offline
        self.upstream_label = urllib.parse.urlsplit(self.client.api_url).netloc
        self.metrics = _Metrics()
        self.limiter = _RateLimiter(self.config.rate_limit_per_minute)
        self.auth_failures = _RateLimiter(self.config.auth_failures_per_minute)
        self.trusted_networks = _parse_networks(self.config.trusted_proxies)
        self.started = time.monotonic()
        self.draining = False
        self.cutting = False  # streams in flight are being cut: their clients are told so
        self.upstream_auth_failures = 0  # in a row; /health is "degraded" past a few
        self.warming = False  # warm_start() is preparing the upstream: /health says "warming"
        self.warm_problem: str | None = None  # why it is not ready yet
        self._closing = threading.Event()
        self.slots = _StreamSlots(self.config.max_streams)
        self.connections = _Connections(self.config.max_connections, self.config.max_connections_per_client)
        self._thread: threading.Thread | None = None
        self._log_handler = log_handler
        self.site = _StaticSite(self.config.web_root)
        self._queue_checked = self._queue_warned = self._descriptors_warned = -math.inf
        self.accept_pauses = 0  # times accepting stopped for want of file descriptors
        if ":" in str(self.config.host):
            self.address_family = socket.AF_INET6  # `::` or `::1`: an IPv6 listener
        super().__init__((self.config.host, int(self.config.port)), _Handler)
        self.loopback_only = _is_loopback_name(self.host)
        self.origins = _Origins(self)
        self.workers = _Workers()  # a thread per connection while it is read, checked and opened upstream
        self.relays = _StreamLoop(self)  # the streaming phase of every stream

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the host's full name: slow or hanging on closed networks.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.host, self.port

    # -- addresses ----------------------------------------------------------

    @property
    def host(self) -> str:
        """The address bound (an IP address literal)."""
        return str(self.server_address[0])

    @property
    def port(self) -> int:
        """The port bound (the OS's choice when asked for port 0)."""
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host, port = self.host, self.port
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def is_trusted(self, address: str) -> bool:
        """True when `address` is in PROXY_TRUSTED_PROXIES."""
        if not self.trusted_networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_networks)

    def client_ip(self, peer: str, forwarded_for: list[str]) -> str:
        """The client's address: `peer`, or from X-Forwarded-For when the peer is a trusted proxy."""
        if not self.trusted_networks or not self.is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in ",".join(forwarded_for).split(",") if hop.strip()]
        for hop in reversed(hops):  # right to left: the first untrusted hop is the client
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # a malformed entry: trust nothing beyond the peer
            if not self.is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def check_api_key(self, authorization: str, client_ip: str) -> None:
        """Raise 401 (or 429 after many guesses) unless `authorization` carries PROXY_API_KEY."""
        expected = self.config.api_key
        if not expected:
            return
        scheme, _, token = authorization.partition(" ")
        # compare_digest: the time taken does not reveal how much of a guess was right.
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode()):
            return
        wait = self.auth_failures.take(client_ip)
        if wait:
            raise _RelayError(429, "too many failed authentication attempts", error_type="rate_limit_error",
                              code="rate_limited", headers={"Retry-After": str(max(1, math.ceil(wait)))})
        raise _RelayError(401, "missing or wrong API key: send Authorization: Bearer <PROXY_API_KEY>",
                          error_type="authentication_error", code="invalid_api_key",
                          headers={"WWW-Authenticate": "Bearer"})

    def check_rate_limit(self, client_ip: str) -> None:
        wait = self.limiter.take(client_ip)
        if wait:
            raise _RelayError(429, "rate limit exceeded: slow down", error_type="rate_limit_error",
                              code="rate_limited", headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def startup_warnings(self) -> list[str]:
        """What an operator must know before trusting this configuration."""
        warnings = []
        if not self.loopback_only and not self.config.api_key:
            warnings.append(f"WARNING: listening on {self.host}, beyond this machine, without "
                            f"PROXY_API_KEY: anyone who can reach port {self.port} can spend the Gloo "
                            "credentials this proxy holds. Set PROXY_API_KEY, or bind 127.0.0.1 behind a front proxy.")
        if "*" in self.config.cors_origins:
            warnings.append("WARNING: PROXY_CORS_ORIGIN=* lets any web page call this proxy from its visitors' "
                            "browsers (answered with Access-Control-Allow-Origin: *, never with credentials).")
        return warnings

    # -- the page ---------------------------------------------------------

    _HOST_SHAPE = re.compile(r"^(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::\d{1,5})?$")

    def fallback_page(self, host: str) -> bytes:
        """The page shown when web/ is missing, with this proxy's real address in its example."""
        address = self.url
        host = host.strip().lower()
        if not self.loopback_only and self._HOST_SHAPE.match(host):
            address = "http://" + host  # bound to every interface: the name the browser used
        elif self.server_address[0] in ("0.0.0.0", "::"):
            address = f"http://127.0.0.1:{self.server_address[1]}"
        return _FALLBACK_PAGE.format(address=html.escape(address)).encode()

    # -- upstream -----------------------------------------------------------

    def open_stream(self, request: _CompletionRequest) -> _Stream:
        """A stream slot and the open upstream stream, tracked so close() can cut it; end it with end_stream()."""
        if not self.slots.acquire():
            raise _RelayError(503, "too many streams in flight; try again shortly", error_type="server_error",
                              code="overloaded", headers={"Retry-After": "1"})
        try:
            if self.offline:
                _cap_markers(request.payload, max_event_bytes=self.config.max_event_bytes)
            stream = self._open(request)
        except BaseException:
            self.slots.release()
            raise
        self.slots.track(stream)
        return stream

    def end_stream(self, stream: _Stream) -> None:
        """Close a stream from open_stream() (idempotent close) and free its slot."""
        if self.slots.untrack(stream):
            stream.close()
            self.slots.release()

    def _open(self, request: _CompletionRequest) -> _Stream:
        client = self.client
        started = time.monotonic()
        try:
            # open() picks the grounded endpoint itself when the payload names a publisher or sources.
            response = client.open(request.payload, url=client.responses_url if request.responses else None)
        except (APIStatusError, TokenError, APIConnectionError, UnexpectedResponseError, StreamError,
                ConfigurationError) as exc:
            kind, error = _from_upstream(exc)
            self.metrics.upstream_error(kind)
            error.outcome = "upstream_error"
            if kind == "credentials":
                self.upstream_auth_failures += 1
                log.error("upstream rejected the proxy's own credentials (%s): check GLOO_CLIENT_ID and "
                          "GLOO_CLIENT_SECRET (or GLOO_API_KEY)", getattr(exc, "status", "token"))
            raise error from None
        self.upstream_auth_failures = 0
        # A relayed answer goes to the client, not to memory: only the non-streaming one keeps its text.
        stream_class: type[ChatStream] | type[ResponseStream] = ResponseStream if request.responses else ChatStream
        return stream_class(response, started=started, read_timeout=client.read_timeout, deadline=client.deadline,
                            max_event_bytes=client.max_event_bytes, keep_text=not request.stream)

    def warm_start(self) -> None:
        """Get the upstream ready in the background (TLS context, token, one connection), then keep
        the token fresh ahead of its expiry; /health says "warming" until the first is done."""
        self.warming = True
        threading.Thread(target=self._keep_warm, name="gloo-proxy-warm", daemon=True).start()

    def _keep_warm(self) -> None:
        delay = 1.0
        while not self._closing.is_set():
            try:
                self.client.warm_up()
            except gloo_stream.GlooError as exc:
                problem = redact(str(exc))
                if problem != self.warm_problem:
                    log.warning("warm start: %s; trying again in %gs", problem, delay)
                self.warm_problem = problem
                if self._closing.wait(delay):
                    return
                delay = min(60.0, delay * 2)
                continue
            if self.warming:
                log.info("warm: ready for the first request (token, TLS context, one upstream connection)")
                self.catalog.fetch()  # (a catalog that cannot be had is logged; streams go on without costs)
            self.warming, self.warm_problem, delay = False, None, 1.0
            tokens = self.client.tokens
            if tokens is None:
                return  # an API key: nothing expires
            if self._closing.wait(max(1.0, tokens.refresh_at - time.monotonic())):
                return

    def health(self) -> dict[str, Any]:
        """The /health answer; "warming" during a warm start, "degraded" after repeated upstream credential failures."""
        degraded = self.upstream_auth_failures >= _AUTH_FAILURES_FOR_DEGRADED
        answer = {
            "status": "degraded" if degraded else "warming" if self.warming else "ok",
            "service": SERVICE_NAME,
            "version": gloo_stream.__version__,
            "active_streams": self.active_streams,
            "max_streams": self.config.max_streams,
            "max_body_bytes": self.config.max_body_bytes,  # (the page sizes its image attachments by it)
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "auth_required": bool(self.config.api_key),
            "upstream": self.upstream_label,
            "simulator": self.offline,
            **self.metrics.snapshot(),
        }
        if self.warming and self.warm_problem and not degraded:
            answer["problem"] = self.warm_problem
        if degraded:
            answer["problem"] = (f"the upstream refused the proxy's credentials {self.upstream_auth_failures} "
                                 "times in a row: check GLOO_CLIENT_ID / GLOO_CLIENT_SECRET or GLOO_API_KEY")
        return answer

    def stream_done(self, exchange: _Exchange, loop: _Relay | None, error: _RelayError | None,
                    writer: _EventWriter | None) -> None:
        """Metrics and the log line's fields for one relayed (or collected) stream."""
        first = loop.first_content if loop is not None else None
        ttft = None if first is None else first - exchange.started
        events, nbytes = (writer.events, writer.bytes) if writer is not None else (0, 0)
        tokens = loop.stream.accumulator.token_count if loop is not None else None
        exchange.extra.update(events=events, ttft_ms=None if ttft is None else int(ttft * 1000), tokens=tokens)
        self.metrics.stream_done(exchange.outcome, time.monotonic() - exchange.started, ttft, events, nbytes)
        if error is not None:
            self.metrics.upstream_error(error.outcome)

    @property
    def active_streams(self) -> int:
        return self.slots.active

    def mark_idle(self, sock: socket.socket, idle: bool) -> None:
        """Note whether a connection waits between requests; while draining, such a one is closed."""
        self.connections.mark_idle(sock, idle)
        if idle and self.draining:
            _shutdown(sock)

    def _shutdown_connections(self, *, idle_only: bool) -> None:
        for sock in self.connections.open(idle_only=idle_only):
            _shutdown(sock)

    # -- logging ------------------------------------------------------------

    def request_done(self, exchange: _Exchange, client: str, method: str) -> None:
        """Count the request and write its one log line."""
        self.metrics.request(exchange.route, exchange.status)
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "client": client,
            "method": method or "-",
            "path": exchange.path or "-",  # no query string: it could hold anything
            "status": exchange.status,
            "duration_ms": int((time.monotonic() - exchange.started) * 1000),
            "outcome": exchange.outcome or "ok",
            "request_id": exchange.request_id,
        }
        record.update({key: value for key, value in exchange.extra.items() if value is not None})
        self.log_line(record)

    def log_line(self, record: dict[str, Any]) -> None:
        """One line per request, text or JSON; never a secret (nothing from headers or bodies)."""
        if self.config.log_format == "json":
            line = json.dumps(record, separators=(",", ":"))  # escapes control characters itself
        else:
            record = {key: _printable(value) if isinstance(value, str) else value for key, value in record.items()}
            head = "{time} {client} {method} {path} {status} {duration_ms}ms {outcome}".format(**record)
            rest = " ".join(f"{key}={value}" for key, value in record.items()
                            if key not in ("time", "client", "method", "path", "status", "duration_ms", "outcome"))
            line = f"{head} {rest}".rstrip()
        line = redact(line)
        if self._log_handler is not None:
            self._log_handler.handle(logging.makeLogRecord({"name": log.name, "levelno": logging.INFO,
                                                            "levelname": "INFO", "msg": line}))
        else:
            log.info(line)

    # -- lifecycle ----------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        # A connection has a thread until its stream goes to the relay loop: past the cap, answer 503 on
        # the spot (no thread) and close.
        # One address holds at most PROXY_MAX_CONNECTIONS_PER_CLIENT of them (front proxies are not counted),
        # so no one client can hold every slot.
        peer = str(client_address[0]) if client_address else ""
        refused = self.connections.admit(request, peer, counted=not self.is_trusted(peer))
        if refused is None:
            self._start_connection_thread(request, client_address)
            return
        self.metrics.connection_refused()
        try:
            request.setblocking(False)
            request.send(_OVERLOADED_RESPONSE if refused == "overloaded" else _TOO_MANY_FROM_YOU)
        except OSError:
            pass
        self.shutdown_request(request, admitted=False)

    def get_request(self) -> tuple[Any, Any]:
        try:
            request, address = super().get_request()
        except OSError as exc:
            if exc.errno in _OUT_OF_DESCRIPTORS:
                self._pause_accepting(exc)
            raise  # socketserver drops this accept and goes on
        now = time.monotonic()
        if now - self._queue_checked >= 1.0:  # at most once a second: one getsockopt
            self._queue_checked = now
            waiting, room = _accept_queue(self.socket)
            if room and waiting >= room and now - self._queue_warned >= 60.0:
                self._queue_warned = now
                log.warning("the listen queue is full (%d connections waiting to be accepted): new connections "
                            "are delayed or dropped; the machine is overloaded", waiting)
        return request, address

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of file descriptors: accepting again at once would spin a core until sockets close, so
        stop accepting briefly (the connections wait in the listen queue), and say so once a minute."""
        self.accept_pauses += 1
        now = time.monotonic()
        if now - self._descriptors_warned >= 60.0:
            self._descriptors_warned = now
            log.warning("cannot accept connections: %s; pausing accepts for %gs at a time until sockets close "
                        "(raise the open-files limit, LimitNOFILE in the unit, or lower PROXY_MAX_CONNECTIONS)",
                        exc.strerror or exc, _ACCEPT_PAUSE)
        self._closing.wait(_ACCEPT_PAUSE)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """A connection's thread: its requests, until one hands its stream to the relay loop or it closes."""
        relay = None
        try:
            handler = self.RequestHandlerClass(request, client_address, self)  # type: ignore[arg-type]
            relay, handler.relay = handler.relay, None  # type: ignore[attr-defined]  # (no cycle between the two)
        except Exception:  # a process boundary, as socketserver's own
            self.handle_error(request, client_address)
        finally:
            if relay is not None:
                self.relays.hand_over(relay)  # this thread is done with the connection: the loop takes it
            else:
                self.shutdown_request(request)

    def _start_connection_thread(self, request: Any, client_address: Any) -> None:
        self.workers.submit(lambda: self.process_request_thread(request, client_address))

    def release_connection(self, handler: _Handler, *, keep_alive: bool) -> None:
        """After a relayed stream: a thread reads the connection's next request, or the connection is closed."""
        sock = handler.connection
        if keep_alive:
            try:
                sock.settimeout(self.config.write_timeout_seconds)
                self.connections.park(sock, (handler._reader, handler.rfile))
                self._start_connection_thread(sock, handler.client_address)
                return
            except (OSError, RuntimeError):  # no thread to be had: the client opens a new connection
                self.connections.take(sock)
        self.connections.closed(sock)
        self.shutdown_request(sock)

    def shutdown_request(self, request: Any, admitted: bool = True) -> None:
        if admitted:
            self.connections.release(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("unhandled error on a connection")

    def start(self) -> ProxyServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="gloo-proxy", daemon=True)
        self._thread.start()
        return self

    def stop_accepting(self) -> None:
        """End the accept loop and close the listening socket: new connections are refused at once."""
        self.draining = True
        self.shutdown()  # the accept loop ends within its 50 ms poll
        try:
            self.socket.close()
        except OSError:
            pass

    def drain(self, grace: float | None = None) -> bool:
        """Stop accepting, let streams in flight finish (up to `grace` seconds); True if all finished."""
        grace = self.config.drain_seconds if grace is None else grace
        self.draining = True
        if self._thread is not None:
            self.shutdown()
        try:
            self.socket.close()  # new connections are refused at once
        except OSError:
            pass
        self._shutdown_connections(idle_only=True)  # kept-alive connections between requests
        # A second Ctrl-C (cut_streams) ends the wait at once.
        return self.slots.wait_empty(time.monotonic() + grace, give_up=lambda: self.cutting)

    def cut_streams(self, wait: float = 1.0) -> None:
        """Cut every stream in flight; each client is sent a last event saying the proxy is shutting down."""
        self.draining = self.cutting = True
        for stream in self.slots.tracked():
            stream.abort()
        self.slots.wait_empty(time.monotonic() + wait)

    def close(self) -> None:
        """Stop at once: cut streams in flight (their clients told why) and release the port."""
        self.draining = True
        if self._thread is not None and self._thread.is_alive():
            self.shutdown()
        self.cut_streams()
        self._shutdown_connections(idle_only=False)
        self.server_close()

    def server_close(self) -> None:
        self._closing.set()
        super().server_close()
        relays = getattr(self, "relays", None)
        if relays is not None:
            relays.stop()
            self.workers.close()

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxy_server.py",
        description="Relay Gloo AI completion streams to browsers and OpenAI clients, holding the credentials.",
        epilog="Every option also has an environment variable (shown in brackets); .env is read too. "
               "Credentials: GLOO_CLIENT_ID and GLOO_CLIENT_SECRET, or a Gloo Studio key in GLOO_API_KEY. "
               "Clients' key: PROXY_API_KEY (environment only, never a flag).",
    )
    for setting in SETTINGS:
        if setting.option is None:
            continue
        if setting.kind == "choice":
            parser.add_argument(setting.option, dest=setting.name, choices=setting.choices, help=setting.describe())
        else:
            parser.add_argument(setting.option, dest=setting.name, metavar=_METAVARS[setting.kind],
                                type=_OptionType(setting), help=setting.describe())
    parser.add_argument("--offline", action="store_true",
                        help="relay the built-in simulator (fake_gloo.py) instead of Gloo")
    parser.add_argument("--version", action="version", version=f"%(prog)s {gloo_stream.__version__}")
    return parser


_METAVARS = {"int": "N", "float": "SECONDS", "list": "A,B", "str": "VALUE", "secret": "VALUE"}


class _OptionType:
    """argparse's `type=` for a setting: its kind and bounds, a usage error (exit 2) when out of them."""

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self.__name__ = setting.kind  # argparse names the type in some messages

    def __call__(self, raw: str) -> Any:
        try:
            return self.setting.parse(raw, str(self.setting.option))
        except ConfigurationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (already parsed by their settings)."""
    return {s.name: getattr(args, s.name) for s in SETTINGS if s.option and getattr(args, s.name) is not None}


def _start_offline() -> Any:
    try:
        import fake_gloo  # noqa: PLC0415 - only for --offline
    except ImportError:
        raise ConfigurationError("--offline needs fake_gloo.py beside proxy_server.py") from None
    fake = fake_gloo.FakeGloo(delay=0.03)
    fake.start()
    return fake


def _bind_error(exc: OSError, host: str, port: Any) -> list[str]:
    """The lines that explain a failed bind: the real address, and a way out that applies."""
    shown = f"[{host}]" if ":" in host else host
    lines = [f"error: cannot listen on {shown}:{port}: {exc.strerror or exc}"]
    if exc.errno == errno.EADDRINUSE:
        lines.append(f"hint: another process holds port {port}; choose another with --port N (or PROXY_PORT), "
                     "or --port 0 for any free port")
    elif exc.errno == errno.EACCES:
        lines.append(f"hint: port {port} needs privileges here; use --port 3001 (or any port above 1023)")
    elif exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        lines.append(f"hint: {host} is not an address of this machine; use --host 127.0.0.1 (or PROXY_HOST)")
    return lines


def _configure(args: argparse.Namespace) -> tuple[Any, Any]:
    """The config and, with --offline, the simulator it relays."""
    gloo_stream.load_dotenv()
    config = ProxyConfig.from_env(**_overrides(args))
    fake = None
    if args.offline:
        fake = _start_offline()
        config.client_id, config.client_secret = fake.client_id, fake.client_secret
        config.token_url, config.api_url = fake.token_url, fake.api_url
        config.upstream_api_key = ""
        print(f"offline: relaying the built-in simulator at {fake.base_url} (no Gloo credentials used)",
              file=sys.stderr)
    return config, fake


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy until SIGTERM/SIGINT (a second one stops at once); returns the exit code."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    _raise_open_files_limit()
    fake = config = None
    try:
        config, fake = _configure(args)
        server = ProxyServer(config, offline=args.offline)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if not args.offline and "credentials" in str(exc):
            print("hint: run with --offline to try the proxy on the built-in simulator", file=sys.stderr)
        if fake is not None:
            fake.stop()
        return 2
    except OSError as exc:
        host, port = (config.host, config.port) if config is not None else (args.host or "127.0.0.1", args.port or 3001)
        for line in _bind_error(exc, host, port):
            print(line, file=sys.stderr)
        if fake is not None:
            fake.stop()
        return 2
    forced = _serve(server, config)
    if fake is not None:
        fake.stop()
    log.info("stopped")
    return 130 if forced else 0


def _serve(server: ProxyServer, config: Any) -> bool:
    """Serve until a signal, then drain; True when a second signal cut the drain short."""
    signals: list[int] = []

    def request_stop(signum: int, frame: Any) -> None:
        signals.append(signum)
        if len(signals) == 1:
            log.info("signal %d: draining streams in flight (up to %gs), then exiting; "
                     "send it again to stop at once", signum, config.drain_seconds)
            threading.Thread(target=server.stop_accepting, name="gloo-proxy-stop", daemon=True).start()
        elif len(signals) == 2:
            log.warning("second signal: cutting %d stream(s) now", server.active_streams)
            threading.Thread(target=server.cut_streams, name="gloo-proxy-cut", daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info("gloo-stream proxy listening on %s (upstream %s, CORS %s, API key %s)", server.url,
             server.upstream_label, ",".join(config.cors_origins) or "none",
             "required" if config.api_key else "not required")
    for warning in server.startup_warnings():
        log.warning(warning)
    server.warm_start()  # the first user need not pay for the token, the CA store and the handshakes
    try:
        server.serve_forever(poll_interval=0.05)  # a stop request is noticed within 50 ms
    finally:
        if not server.drain(config.drain_seconds) and len(signals) < 2:
            log.warning("%d stream(s) still open after %gs; closing them (their clients are told so)",
                        server.active_streams, config.drain_seconds)
        server.close()
    return len(signals) > 1


if __name__ == "__main__":
    sys.exit(main())
