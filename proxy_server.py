#!/usr/bin/env python3
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
import hmac
import io
import ipaddress
import json
import logging
import math
import os
import re
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import gloo_stream
from gloo_stream import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ChatStream,
    ConfigurationError,
    GlooClient,
    ServerSentEvent,
    StreamError,
    StreamTimeoutError,
    TokenError,
    UnexpectedResponseError,
)

__all__ = ["ProxyConfig", "ProxyServer", "main"]

SERVICE_NAME = "completions-streaming-proxy"
_HERE = os.path.dirname(os.path.abspath(__file__))
_FORWARDED_FIELDS = ("messages", "auto_routing", "model", "model_family", "tradition", "temperature",
                     "max_tokens", "tools", "tool_choice")
_ROUTING_FIELDS = ("auto_routing", "model", "model_family")
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
_POLL_IN = select.POLLIN | select.POLLPRI if hasattr(select, "poll") else 0
_POLL_GONE = (select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
              if hasattr(select, "poll") else 0)
_HEARTBEAT_FRAME = b": keep-alive\n\n"

log = logging.getLogger("gloo_proxy")


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def _env_number(environ: Mapping[str, str], name: str, default: float, *, minimum: float = 0) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


def _split_list(raw: str) -> Tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass
class ProxyConfig:
    """Everything the proxy needs; `from_env()` reads PROXY_* and GLOO_* variables."""

    host: str = "127.0.0.1"
    port: int = 3001
    cors_origins: Tuple[str, ...] = ("http://localhost:3000",)
    api_key: Optional[str] = field(default=None, repr=False)  # PROXY_API_KEY: what clients must send
    max_body_bytes: int = 1024 * 1024
    max_streams: int = 256
    max_connections: int = 4096
    rate_limit_per_minute: int = 120
    auth_failures_per_minute: int = 10
    heartbeat_seconds: float = 15.0
    upstream_idle_seconds: float = 60.0
    request_timeout_seconds: float = 10.0
    write_timeout_seconds: float = 30.0
    max_event_bytes: int = 1024 * 1024
    trusted_proxies: Tuple[str, ...] = ()
    drain_seconds: float = 30.0
    log_format: str = "text"
    web_root: str = os.path.join(_HERE, "web")
    upstream_retries: int = 2
    # Upstream (Gloo) settings; None means "from the environment" as gloo_stream reads it.
    client_id: Optional[str] = None
    client_secret: Optional[str] = field(default=None, repr=False)
    upstream_api_key: Optional[str] = field(default=None, repr=False)  # GLOO_API_KEY
    token_url: Optional[str] = None
    api_url: Optional[str] = None

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> "ProxyConfig":
        """Read PROXY_* variables (explicit `overrides` win); raises ConfigurationError on bad values."""
        env = os.environ if environ is None else environ
        values: Dict[str, Any] = {
            "host": env.get("PROXY_HOST") or cls.host,
            "port": int(_env_number(env, "PROXY_PORT", cls.port)),
            "cors_origins": _split_list(env["PROXY_CORS_ORIGIN"]) if env.get("PROXY_CORS_ORIGIN") is not None
            else cls.cors_origins,
            "api_key": env.get("PROXY_API_KEY") or None,
            "max_body_bytes": int(_env_number(env, "PROXY_MAX_BODY_BYTES", cls.max_body_bytes, minimum=1)),
            "max_streams": int(_env_number(env, "PROXY_MAX_STREAMS", cls.max_streams, minimum=1)),
            "max_connections": int(_env_number(env, "PROXY_MAX_CONNECTIONS", cls.max_connections, minimum=1)),
            "rate_limit_per_minute": int(_env_number(env, "PROXY_RATE_LIMIT_PER_MINUTE", cls.rate_limit_per_minute)),
            "heartbeat_seconds": _env_number(env, "PROXY_HEARTBEAT_SECONDS", cls.heartbeat_seconds, minimum=0.01),
            "upstream_idle_seconds": _env_number(env, "PROXY_UPSTREAM_IDLE_SECONDS", cls.upstream_idle_seconds,
                                                 minimum=0.01),
            "request_timeout_seconds": _env_number(env, "PROXY_REQUEST_TIMEOUT_SECONDS",
                                                   cls.request_timeout_seconds, minimum=0.01),
            "write_timeout_seconds": _env_number(env, "PROXY_WRITE_TIMEOUT_SECONDS", cls.write_timeout_seconds,
                                                 minimum=0.01),
            "max_event_bytes": int(_env_number(env, "PROXY_MAX_EVENT_BYTES", cls.max_event_bytes, minimum=1)),
            "trusted_proxies": _split_list(env.get("PROXY_TRUSTED_PROXIES", "")),
            "drain_seconds": _env_number(env, "PROXY_DRAIN_SECONDS", cls.drain_seconds),
            "log_format": env.get("PROXY_LOG_FORMAT") or cls.log_format,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigurationError when a value cannot work."""
        if not 0 <= int(self.port) <= 65535:
            raise ConfigurationError(f"port must be 0-65535, got {self.port}")
        if self.log_format not in ("text", "json"):
            raise ConfigurationError(f"log format must be 'text' or 'json', got {self.log_format!r}")
        for origin in self.cors_origins:
            if origin != "*" and urllib.parse.urlsplit(origin).scheme not in ("http", "https"):
                raise ConfigurationError(f"PROXY_CORS_ORIGIN entries must be http(s) origins, got {origin!r}")
        _parse_networks(self.trusted_proxies)


def _parse_networks(entries: Sequence[str]) -> Tuple[Any, ...]:
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
        self._buckets: Dict[str, Tuple[float, float]] = {}
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
        self.requests: Dict[Tuple[str, int], int] = {}
        self.streams: Dict[str, int] = {}
        self.upstream_errors: Dict[str, int] = {}
        self.bytes_relayed = 0
        self.events_relayed = 0
        self.refused_connections = 0
        self.ttft = _Histogram((0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.duration = _Histogram((0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))

    def request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1

    def stream_done(self, outcome: str, duration: float, ttft: Optional[float], events: int, nbytes: int) -> None:
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
        out: List[str] = []

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

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "requests": sum(self.requests.values()),
                "streams": dict(self.streams),
                "events_relayed": self.events_relayed,
            }


_OVERLOADED_BODY = json.dumps({"error": {"message": "too many open connections; try again shortly",
                                         "type": "server_error", "code": "overloaded"}}).encode()
_OVERLOADED_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(_OVERLOADED_BODY), _OVERLOADED_BODY))

_FALLBACK_PAGE_MARKER = "\0builtin-page"
_FALLBACK_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gloo-stream proxy</title></head>
<body><h1>gloo-stream proxy</h1>
<p>The chat page lives in <code>web/</code> beside <code>proxy_server.py</code>, and that folder was not found.</p>
<p>The API works: <code>curl -N -X POST http://HOST:PORT/api/stream -H 'Content-Type: application/json'
-d '{"messages":[{"role":"user","content":"Hello"}]}'</code></p></body></html>
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
    """Stands in for rfile while http.server reads the header lines, to vet the raw bytes."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.bare_cr = False

    def readline(self, limit: int = -1) -> bytes:
        line = self.file.readline(limit)
        if b"\r" in line.rstrip(b"\r\n") or (line.endswith(b"\r") and not line.endswith(b"\r\n")):
            self.bare_cr = True
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


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def _printable(text: str) -> str:
    """Control characters (and backslashes) escaped, so a log line shows them and cannot be forged."""
    return _UNPRINTABLE.sub(lambda m: "\\x%02x" % ord(m.group()), text)


class _HTTPError(Exception):
    """An answer decided while handling a request: status, JSON error fields, extra headers."""

    def __init__(self, status: int, message: str, *, error_type: str = "invalid_request_error",
                 code: Any = None, headers: Optional[Dict[str, str]] = None, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.headers = headers or {}
        self.close = close


_MAX_JSON_DEPTH = 64  # far beyond any chat request; keeps re-encoding well inside the recursion limit


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (iterative: no recursion to exhaust)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
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


# ---------------------------------------------------------------------------
# The request handler
# ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # never answer in HTTP/0.9 style (a body with no status line)
    server_version = "gloo-stream-proxy/" + gloo_stream.__version__
    sys_version = ""
    disable_nagle_algorithm = True  # small event writes must leave at once
    server: "ProxyServer"

    _API_ROUTES = {
        "/api/stream": ("POST", "OPTIONS"),
        "/v1/chat/completions": ("POST", "OPTIONS"),
        "/v1/models": ("GET", "OPTIONS"),
    }
    _OPEN_ROUTES = {"/health": ("GET",), "/metrics": ("GET",)}
    _ROUTES = {**_OPEN_ROUTES, **_API_ROUTES}  # every fixed route and its methods; static files aside

    # -- connection and request lifecycle ---------------------------------

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection)
        self.rfile.close()
        self.rfile = io.BufferedReader(self._reader, 64 * 1024)
        self.server.connection_opened(self.connection)

    def finish(self) -> None:
        self.server.connection_closed(self.connection)
        try:
            super().finish()
        except OSError:
            pass  # the client is gone; nothing is left to flush

    def handle_one_request(self) -> None:
        self._started = time.monotonic()
        self._status = 0
        self._outcome = ""
        self._extra: Dict[str, Any] = {}
        self._route = "other"
        self.command = ""
        self.path = ""
        self.request_version = "HTTP/1.1"
        self.headers = None  # type: ignore[assignment]
        self._body_read = False
        config = self.server.config
        self._reader.deadline = time.monotonic() + config.request_timeout_seconds
        server = self.server
        server.mark_idle(self.connection, True)
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:  # idle keep-alive connection timed out, or the client vanished
            self.close_connection = True
            return
        finally:
            server.mark_idle(self.connection, False)
        if not self.raw_requestline:
            self.close_connection = True
            return
        self._started = time.monotonic()
        try:
            if len(self.raw_requestline) > 65536:
                self.requestline = ""
                self.request_version = "HTTP/1.1"
                self.close_connection = True
                self._answer_error(_HTTPError(414, "request line too long", close=True))
                return
            if b"\r" in self.raw_requestline.rstrip(b"\r\n"):
                self.close_connection = True
                self._answer_error(_HTTPError(400, "the request line holds a bare CR", close=True))
                return
            recorder = _HeaderRecorder(self.rfile)
            self.rfile = recorder  # type: ignore[assignment]
            try:
                if not self.parse_request():  # it answered the error itself
                    return
            except socket.timeout:
                self.close_connection = True
                self._answer_error(_HTTPError(408, "request headers took too long", close=True))
                return
            finally:
                self.rfile = recorder.file
            if recorder.bare_cr:
                # RFC 9112 2.2: a bare CR is not a line end. Python's header parser splits on it,
                # so a header could hide inside another from a front proxy that keeps it.
                self.headers = None  # type: ignore[assignment]  # none of them is believed
                self.close_connection = True
                self._answer_error(_HTTPError(400, "a header holds a bare CR", close=True))
                return
            self._dispatch()
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError) as exc:
            self.close_connection = True
            if not self._outcome:
                self._outcome = "client_gone" if not isinstance(exc, socket.timeout) else "timeout"
            if not self._status:
                self._status = 499
        except Exception:  # a process boundary: never a stack trace to the client
            log.exception("unexpected error handling %s %s", self.command, self._route)
            self.close_connection = True
            if not self._status:
                try:
                    self._answer_error(_HTTPError(500, "internal error", error_type="server_error", close=True))
                except OSError:
                    pass
        finally:
            if self._status:
                self._log_request()

    def _dispatch(self) -> None:
        try:
            path = urllib.parse.urlsplit(self.path).path or "/"
        except ValueError:
            self._answer_error(_HTTPError(400, "the request target is not a valid URL", close=True))
            return
        method = self.command
        self._path = path
        if self.server.draining:
            self.close_connection = True
            self._answer_error(_HTTPError(503, "the proxy is shutting down", error_type="server_error",
                                          headers={"Retry-After": "1"}, close=True))
            return
        allowed = self._ROUTES.get(path)
        static = self.server.static_file(path) if allowed is None else None
        if static is not None:
            allowed = ("GET", "HEAD")
        self._route = "static" if static is not None else (path if allowed is not None else "other")
        try:
            if allowed is None:
                raise _HTTPError(404, f"no route for {method} {path}", code="not_found")
            if method not in allowed:
                raise _HTTPError(405, f"{method} is not allowed on {path}", code="method_not_allowed",
                                 headers={"Allow": ", ".join(allowed)})
            if path in self._API_ROUTES:
                self._check_origin()
                if method == "OPTIONS":
                    self._preflight(allowed)
                    return
                self._check_api_key()
                self._check_rate_limit()
            if static is not None:
                self._serve_static(static, head=method == "HEAD")
            elif path == "/health":
                self._health()
            elif path == "/metrics":
                self._check_api_key()
                self._send_body(200, self.server.metrics.render(self.server.active_streams).encode(),
                                "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/v1/models":
                self._models()
            else:
                self._completion(openai=path == "/v1/chat/completions")
        except _HTTPError as exc:
            self._answer_error(exc)

    # -- responses ----------------------------------------------------------

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own errors (bad request line, header limits) as JSON too."""
        self.close_connection = True
        self._answer_error(_HTTPError(code, message or self.responses.get(code, ("error",))[0], close=True))

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # one line per request is written by _log_request when the request ends

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http.server: " + format, *args)

    def _cors_headers(self) -> List[Tuple[str, str]]:
        headers = getattr(self, "headers", None)
        origin = headers.get("Origin") if headers is not None else None
        if origin and self._origin_allowed(origin) and origin in self._cors_list():
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                    ("Access-Control-Expose-Headers", "Retry-After")]
        return [("Vary", "Origin")] if origin else []

    def _start(self, status: int, headers: Sequence[Tuple[str, str]]) -> None:
        self._discard_unread_body()
        self._status = status
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        self.send_header("Server", self.server_version)
        for name, value in headers:
            self.send_header(name, value)
        for name, value in self._cors_headers():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send_body(self, status: int, body: bytes, content_type: str,
                   headers: Sequence[Tuple[str, str]] = (), *, head: bool = False) -> None:
        all_headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")]
        all_headers.extend(headers)
        self.connection.settimeout(self.server.config.write_timeout_seconds)
        self._start(status, all_headers)
        if not head:
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: Sequence[Tuple[str, str]] = ()) -> None:
        self._send_body(status, json.dumps(payload).encode(), "application/json", headers)

    def _answer_error(self, error: _HTTPError) -> None:
        if error.close:
            self.close_connection = True
        if not self._outcome:
            self._outcome = "rejected"
        self._extra.setdefault("error", error.message[:120])
        body = {"error": {"message": error.message, "type": error.error_type,
                          "code": error.code if error.code is not None else error.status}}
        self._send_json(error.status, body, list(error.headers.items()))

    _DISCARD_LIMIT = 64 * 1024

    def _discard_unread_body(self) -> None:
        """A body left unread would be taken for the next request: read a small one, else close."""
        if self._body_read or self.close_connection or self.headers is None:
            return
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            return
        raw_length = (self.headers.get("Content-Length") or "0").strip()
        if not raw_length.isdigit() or not raw_length.isascii() or int(raw_length) > self._DISCARD_LIMIT:
            self.close_connection = True
            return
        length = int(raw_length)
        try:
            if length and len(self.rfile.read(length)) < length:
                self.close_connection = True
        except OSError:
            self.close_connection = True
        self._body_read = True

    # -- checks -------------------------------------------------------------

    def _cors_list(self) -> Tuple[str, ...]:
        return self.server.config.cors_origins

    def _origin_allowed(self, origin: str) -> bool:
        allowed = self._cors_list()
        return "*" in allowed or origin in allowed or self._same_origin(origin)

    def _same_origin(self, origin: str) -> bool:
        # The page the proxy serves posts to the proxy: Origin is the proxy's own address.
        host = (self.headers.get("Host") or "").strip().lower()
        try:
            parts = urllib.parse.urlsplit(origin.strip().lower())
            hostname = parts.hostname or ""
        except ValueError:  # e.g. an unbalanced "[": not an origin at all
            return False
        if not host or parts.scheme not in ("http", "https") or parts.netloc != host:
            return False
        # Guard against DNS rebinding: on a loopback address, only loopback names are "us".
        if self.server.loopback_only and not self._from_trusted_proxy():
            return _is_loopback_name(hostname)
        return True

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin):
            raise _HTTPError(403, "this origin is not allowed (set PROXY_CORS_ORIGIN)", code="origin_not_allowed")

    def _preflight(self, allowed: Sequence[str]) -> None:
        headers = [("Allow", ", ".join(allowed)), ("Content-Length", "0")]
        if self.headers.get("Origin"):
            headers += [("Access-Control-Allow-Methods", ", ".join(allowed)),
                        ("Access-Control-Allow-Headers", "Content-Type, Authorization"),
                        ("Access-Control-Max-Age", "600")]
        self._outcome = "preflight"
        self.connection.settimeout(self.server.config.write_timeout_seconds)
        self._start(204, headers)

    def _check_api_key(self) -> None:
        expected = self.server.config.api_key
        if not expected:
            return
        given = self.headers.get("Authorization") or ""
        scheme, _, token = given.partition(" ")
        # compare_digest: the time taken does not reveal how much of a guess was right.
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode()):
            return
        wait = self.server.auth_failures.take(self.client_ip)
        if wait:
            raise _HTTPError(429, "too many failed authentication attempts", error_type="rate_limit_error",
                             code="rate_limited", headers={"Retry-After": str(max(1, math.ceil(wait)))})
        raise _HTTPError(401, "missing or wrong API key: send Authorization: Bearer <PROXY_API_KEY>",
                         error_type="authentication_error", code="invalid_api_key",
                         headers={"WWW-Authenticate": "Bearer"})

    def _check_rate_limit(self) -> None:
        wait = self.server.limiter.take(self.client_ip)
        if wait:
            raise _HTTPError(429, "rate limit exceeded: slow down", error_type="rate_limit_error",
                             code="rate_limited", headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def _from_trusted_proxy(self) -> bool:
        return self.server.is_trusted(self.client_address[0])

    @property
    def client_ip(self) -> str:
        """The client's address: the peer, or from X-Forwarded-For when the peer is a trusted proxy."""
        peer = self.client_address[0]
        if not self.server.trusted_networks or not self.server.is_trusted(peer):
            return peer
        forwarded = ",".join(self.headers.get_all("X-Forwarded-For") or [])
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        for hop in reversed(hops):  # right to left: the first untrusted hop is the client
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # a malformed entry: trust nothing beyond the peer
            if not self.server.is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    # -- simple routes ------------------------------------------------------

    def _health(self) -> None:
        server = self.server
        self._send_json(200, {
            "status": "ok",
            "service": SERVICE_NAME,
            "version": gloo_stream.__version__,
            "active_streams": server.active_streams,
            "max_streams": server.config.max_streams,
            "uptime_seconds": round(time.monotonic() - server.started, 3),
            "auth_required": bool(server.config.api_key),
            "upstream": server.upstream_label,
            **server.metrics.snapshot(),
        })

    def _models(self) -> None:
        self._send_json(200, {"object": "list", "data": [
            {"id": "auto", "object": "model", "created": 0, "owned_by": "gloo"},
        ]})

    def _serve_static(self, file_path: str, *, head: bool) -> None:
        self._outcome = "static"
        if file_path == _FALLBACK_PAGE_MARKER:
            self._send_body(200, _FALLBACK_PAGE, "text/html; charset=utf-8", _SECURITY_HEADERS, head=head)
            return
        try:
            with open(file_path, "rb") as handle:
                body = handle.read()
        except OSError:
            raise _HTTPError(404, "not found", code="not_found") from None
        content_type = _STATIC_TYPES.get(os.path.splitext(file_path)[1].lower(), "application/octet-stream")
        self._send_body(200, body, content_type, _SECURITY_HEADERS, head=head)

    # -- completions --------------------------------------------------------

    def _read_json_body(self) -> Dict[str, Any]:
        config = self.server.config
        if self.headers.get("Transfer-Encoding") is not None:
            if self.headers.get("Content-Length") is not None:
                raise _HTTPError(400, "Content-Length and Transfer-Encoding together are not allowed", close=True)
            raise _HTTPError(411, "send the body with a Content-Length (chunked bodies are not accepted)",
                             close=True)
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) != 1:
            raise _HTTPError(411 if not lengths else 400, "send exactly one Content-Length", close=True)
        raw_length = lengths[0].strip()
        if not raw_length.isdigit() or not raw_length.isascii():
            raise _HTTPError(400, "Content-Length must be a non-negative integer", close=True)
        length = int(raw_length)
        if length > config.max_body_bytes:
            raise _HTTPError(413, f"the body is larger than {config.max_body_bytes} bytes", close=True)
        if content_type != "application/json":
            raise _HTTPError(415, "send the body as Content-Type: application/json")
        self._body_read = True  # from here on, whatever happens, the body is not left for the next request
        try:
            raw = self.rfile.read(length)
        except socket.timeout:
            raise _HTTPError(408, "the request body took too long", close=True) from None
        if len(raw) < length:
            raise _HTTPError(400, "the body is shorter than its Content-Length", close=True)
        try:
            text = raw.decode("utf-8")
            body = json.loads(text, parse_float=_finite_float, parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise _HTTPError(400, "the body is not valid UTF-8") from None
        except (ValueError, RecursionError):
            raise _HTTPError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _HTTPError(400, "the body must be a JSON object")
        if _depth(body) > _MAX_JSON_DEPTH:
            raise _HTTPError(400, f"the body is nested more than {_MAX_JSON_DEPTH} levels deep")
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _HTTPError(400, "the body holds a lone surrogate (\\ud800-\\udfff): not valid Unicode") from None
        return body

    def _build_payload(self, body: Dict[str, Any], *, openai: bool) -> Dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HTTPError(400, "messages must be a non-empty list of {role, content} objects",
                             code="invalid_messages")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _HTTPError(400, "each message must be an object with a string role", code="invalid_messages")
        payload = {key: body[key] for key in _FORWARDED_FIELDS if body.get(key) is not None}
        if openai and payload.get("model") in ("auto", ""):
            del payload["model"]
        if payload.get("auto_routing") is False:
            del payload["auto_routing"]
        routing = [key for key in _ROUTING_FIELDS if key in payload]
        if len(routing) > 1:
            raise _HTTPError(400, "give only one of auto_routing, model and model_family", code="invalid_routing")
        if not routing:
            payload["auto_routing"] = True
        payload["stream"] = True
        self._extra["prompt_chars"] = sum(len(m.get("content")) for m in messages
                                          if isinstance(m.get("content"), str))
        return payload

    def _completion(self, *, openai: bool) -> None:
        body = self._read_json_body()
        payload = self._build_payload(body, openai=openai)
        wants_stream = bool(body.get("stream")) if openai else True
        server = self.server
        if not server.acquire_stream():
            raise _HTTPError(503, "too many streams in flight; try again shortly", error_type="server_error",
                             code="overloaded", headers={"Retry-After": "1"})
        try:
            stream = self._open_upstream(payload)
            try:
                server.track(stream)
                if wants_stream:
                    self._relay(stream, openai=openai)
                else:
                    self._collect(stream)
            finally:
                server.untrack(stream)
                stream.close()
        finally:
            server.release_stream()

    def _open_upstream(self, payload: Dict[str, Any]) -> ChatStream:
        server = self.server
        try:
            return server.client.stream_payload(payload)
        except (APIStatusError, TokenError, APIConnectionError, UnexpectedResponseError, StreamError,
                ConfigurationError) as exc:
            kind, error = _map_upstream_error(exc)
            server.metrics.upstream_error(kind)
            self._outcome = "upstream_error"
            self._extra["upstream"] = kind
            if kind == "credentials":
                log.error("upstream rejected the proxy's own credentials (%s): check GLOO_CLIENT_ID and "
                          "GLOO_CLIENT_SECRET", getattr(exc, "status", "token"))
            raise error from None

    def _relay(self, stream: ChatStream, *, openai: bool) -> None:
        """Relay whole upstream events as they arrive, one write per upstream read."""
        server = self.server
        config = server.config
        conn = self.connection
        conn.settimeout(config.write_timeout_seconds)
        # HTTP/1.1 clients get chunked framing; an HTTP/1.0 client (no chunked coding) gets the
        # bare stream, ended by closing the connection.
        chunked = self.request_version != "HTTP/1.0"
        if not chunked:
            self.close_connection = True
        headers = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"),
                   ("X-Accel-Buffering", "no")]
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        self._start(200, headers)
        raw_write = self.wfile.write

        def write(payload: bytes) -> None:
            raw_write(b"%x\r\n%s\r\n" % (len(payload), payload) if chunked else payload)

        self._outcome = "complete"
        started = self._started
        accumulator = stream.accumulator
        accumulator.keep_text = False  # the relay counts tokens; the text goes to the client, not memory
        poller = select.poll()
        upstream_fd = stream.fileno()
        client_fd = conn.fileno()
        poller.register(upstream_fd, _POLL_IN)
        poller.register(client_fd, _POLL_IN | _POLL_GONE)
        watching_client = True
        last_upstream = last_write = time.monotonic()
        first_content: Optional[float] = None
        events = nbytes = 0
        done = False
        last_id = ""
        error: Optional[Dict[str, Any]] = None
        try:
            while True:
                if not stream.buffered:
                    now = time.monotonic()
                    wait = min(last_write + config.heartbeat_seconds, last_upstream + config.upstream_idle_seconds)
                    ready = poller.poll(max(0.0, wait - now) * 1000)
                    upstream_ready = False
                    for fd, flags in ready:
                        if fd == upstream_fd:
                            upstream_ready = True
                        elif fd == client_fd and watching_client:
                            if self._client_gone(flags):
                                self._outcome = "client_gone"
                                log.info("client went away mid-stream; closing the upstream connection")
                                return
                            poller.unregister(client_fd)  # pipelined bytes: stop watching, keep going
                            watching_client = False
                    if not upstream_ready:
                        now = time.monotonic()
                        if now - last_upstream >= config.upstream_idle_seconds:
                            error = {"message": f"the upstream sent nothing for {config.upstream_idle_seconds:g}s",
                                     "type": "upstream_timeout", "code": 504}
                            self._outcome = "upstream_timeout"
                            break
                        if now - last_write >= config.heartbeat_seconds:
                            write(_HEARTBEAT_FRAME)
                            last_write = now
                        continue
                batch = stream.read_batch()
                if batch is None:
                    break
                if not batch:
                    # Bytes but no whole event: idleness counts from the last whole event, so an
                    # upstream that trickles without ever finishing one still times out.
                    if time.monotonic() - last_upstream >= config.upstream_idle_seconds:
                        error = {"message": f"the upstream sent no complete event for "
                                            f"{config.upstream_idle_seconds:g}s",
                                 "type": "upstream_timeout", "code": 504}
                        self._outcome = "upstream_timeout"
                        break
                    continue
                last_upstream = time.monotonic()
                parts: List[str] = []
                for event in batch:
                    data = event.data
                    if data == "[DONE]":
                        done = True
                    else:
                        had_content = accumulator.token_count
                        try:
                            chunk = json.loads(data)
                        except (ValueError, RecursionError):
                            chunk = None
                        accumulator.add(chunk)
                        if first_content is None and accumulator.first_token_at is not None:
                            first_content = last_upstream
                    parts.append(_encode_event(event, last_id))
                    last_id = event.id
                    events += 1
                # An upstream that echoes the proxy's own bearer token never hands it to a client.
                payload = gloo_stream._redact("".join(parts)).encode("utf-8")
                write(payload)
                nbytes += len(payload)
                last_write = time.monotonic()
                if done:
                    break
            if error is None and accumulator.error is not None:
                upstream_error = accumulator.error
                error = {"message": gloo_stream._describe_provider_error(upstream_error),
                         "type": "upstream_error", "code": upstream_error.get("name") or upstream_error.get("code")}
                self._outcome = "upstream_error"
            elif error is None and not done and accumulator.finish_reason is None:
                error = {"message": "the upstream connection ended before the answer finished",
                         "type": "upstream_disconnected", "code": 502}
                self._outcome = "upstream_disconnected"
        except StreamError as exc:
            kind = "upstream_timeout" if isinstance(exc, StreamTimeoutError) else (
                "upstream_event_too_large" if isinstance(exc, gloo_stream.EventTooLargeError)
                else "upstream_disconnected")
            error = {"message": str(exc), "type": kind, "code": 502}
            self._outcome = kind
        except socket.timeout:
            self._outcome = "slow_client"
            self.close_connection = True
            log.info("client stopped reading for %gs; closing the stream", config.write_timeout_seconds)
            return
        except OSError:
            self._outcome = "client_gone"
            self.close_connection = True
            log.info("client went away mid-stream; closing the upstream connection")
            return
        finally:
            elapsed = time.monotonic() - started
            ttft = None if first_content is None else first_content - started
            self._extra.update(events=events, ttft_ms=None if ttft is None else int(ttft * 1000),
                               tokens=accumulator.token_count)
            server.metrics.stream_done(self._outcome, elapsed, ttft, events, nbytes)
            if self._outcome in ("client_gone", "slow_client"):
                self.close_connection = True
                stream.close()
        tail = b""
        if error is not None:
            server.metrics.upstream_error(error["type"])
            tail += gloo_stream._redact("data: " + json.dumps({"error": error}) + "\n\n").encode()
        elif openai and not done:
            tail += b"data: [DONE]\n\n"
        if tail:
            write(tail)
        if chunked:
            raw_write(b"0\r\n\r\n")
        if self.server.draining:
            self.close_connection = True

    def _client_gone(self, flags: int) -> bool:
        if flags & _POLL_GONE:
            return True
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _collect(self, stream: ChatStream) -> None:
        """The OpenAI non-streaming answer: read the whole stream, answer one chat.completion."""
        try:
            for _ in stream.chunks():
                pass
        except StreamError as exc:
            self._outcome = "upstream_error"
            self.server.metrics.upstream_error("upstream_disconnected")
            raise _HTTPError(502, f"the upstream failed mid-answer: {exc}", error_type="upstream_error") from None
        result = stream.result()
        message: Dict[str, Any] = {"role": "assistant", "content": result.text}
        if result.tool_calls:
            message["tool_calls"] = [{key: call[key] for key in ("id", "type", "function")}
                                     for call in result.tool_calls]
        self._outcome = "complete"
        self._extra.update(tokens=result.token_count, ttft_ms=result.ttft_ms)
        self.server.metrics.stream_done("complete", result.duration_ms / 1000,
                                        None if result.ttft_ms is None else result.ttft_ms / 1000, 0, 0)
        self._send_json(200, {
            "id": result.id or "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": result.model or "auto",
            "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
            "usage": result.usage,
        })

    # -- logging ------------------------------------------------------------

    def _log_request(self) -> None:
        server = self.server
        duration_ms = int((time.monotonic() - self._started) * 1000)
        status = self._status
        server.metrics.request(self._route, status)
        record: Dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "client": self.client_ip if self.headers is not None else self.client_address[0],
            "method": self.command or "-",
            "path": getattr(self, "_path", "") or "-",  # no query string: it could hold anything
            "status": status,
            "duration_ms": duration_ms,
            "outcome": self._outcome or "ok",
        }
        record.update({key: value for key, value in self._extra.items() if value is not None})
        server.log_line(record)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


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


def _map_upstream_error(exc: Exception) -> Tuple[str, _HTTPError]:
    """What a failure before the first byte becomes for the client."""
    if isinstance(exc, APIStatusError):
        status = exc.status
        detail = _upstream_detail(exc.body)
        if status in (400, 422):
            return "bad_request", _HTTPError(status, detail or "the upstream rejected the request",
                                             error_type="invalid_request_error", code=status)
        if status in (401, 403):
            return "credentials", _HTTPError(502, "the proxy's upstream credentials were rejected",
                                             error_type="upstream_error", code="upstream_auth")
        if status == 429:
            wait = exc.retry_after if exc.retry_after is not None else 1
            return "rate_limited", _HTTPError(429, "the upstream is rate limiting; try again later",
                                              error_type="rate_limit_error", code="upstream_rate_limited",
                                              headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return f"status_{status}", _HTTPError(502, f"the upstream answered {status}",
                                              error_type="upstream_error", code=status)
    if isinstance(exc, TokenError):
        return "credentials", _HTTPError(502, "the proxy could not get an upstream token",
                                         error_type="upstream_error", code="upstream_auth")
    if isinstance(exc, APITimeoutError):
        return "timeout", _HTTPError(504, "the upstream did not answer in time", error_type="upstream_error",
                                     code="upstream_timeout")
    if isinstance(exc, APIConnectionError):
        return "connection", _HTTPError(502, "the upstream could not be reached", error_type="upstream_error",
                                        code="upstream_unreachable")
    if isinstance(exc, UnexpectedResponseError):
        return "bad_response", _HTTPError(502, "the upstream answered something that is not an event stream",
                                          error_type="upstream_error", code="upstream_bad_response")
    return "other", _HTTPError(502, "the upstream failed", error_type="upstream_error", code="upstream_error")


def _upstream_detail(body: str) -> str:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail")
        return str(message)[:300] if message else ""
    if isinstance(error, str):
        return error[:300]
    return ""


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class ProxyServer(ThreadingHTTPServer):
    """The relay: a threading HTTP server bound on construction.

    `with ProxyServer(config) as proxy:` serves in a background thread at `proxy.url`;
    `serve_forever()` serves in the calling thread; `drain()` stops it gracefully.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the listen backlog: bursts of hundreds of connections wait, not fail

    def __init__(self, config: Optional[ProxyConfig] = None, *, client: Optional[GlooClient] = None,
                 log_handler: Optional[logging.Handler] = None) -> None:
        self.config = config or ProxyConfig()
        self.config.validate()
        self.client = client or GlooClient(
            client_id=self.config.client_id,
            client_secret=self.config.client_secret,
            api_key=self.config.upstream_api_key,
            token_url=self.config.token_url,
            api_url=self.config.api_url,
            read_timeout=self.config.upstream_idle_seconds,
            max_retries=self.config.upstream_retries,
            max_event_bytes=self.config.max_event_bytes,
        )
        self.upstream_label = urllib.parse.urlsplit(self.client.api_url).netloc
        self.metrics = _Metrics()
        self.limiter = _RateLimiter(self.config.rate_limit_per_minute)
        self.auth_failures = _RateLimiter(self.config.auth_failures_per_minute)
        self.trusted_networks = _parse_networks(self.config.trusted_proxies)
        self.started = time.monotonic()
        self.draining = False
        self._streams_lock = threading.Condition()
        self._active = 0
        self._tracked: "set[ChatStream]" = set()
        self._connections: Dict[socket.socket, bool] = {}  # open client connections: idle between requests?
        self._open_connections = 0  # admitted by process_request, released by shutdown_request
        self._thread: Optional[threading.Thread] = None
        self._log_handler = log_handler
        self._static = self._scan_static(self.config.web_root)
        super().__init__((self.config.host, int(self.config.port)), _Handler)
        self.loopback_only = self._is_loopback(self.server_address[0])

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the host's full name: slow or hanging on closed networks.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = host, port

    # -- addresses ----------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @staticmethod
    def _is_loopback(host: str) -> bool:
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host == "localhost"

    def is_trusted(self, address: str) -> bool:
        """True when `address` is in PROXY_TRUSTED_PROXIES."""
        if not self.trusted_networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_networks)

    # -- static files -------------------------------------------------------

    @staticmethod
    def _scan_static(root: str) -> Dict[str, str]:
        """The files that can ever be served: regular files directly in `root`, no links."""
        files: Dict[str, str] = {}
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

    def static_file(self, path: str) -> Optional[str]:
        """The file for a URL path, only ever one found by the startup scan."""
        found = self._static.get(path)
        if found is None and path == "/":
            return _FALLBACK_PAGE_MARKER
        return found

    # -- stream accounting --------------------------------------------------

    @property
    def active_streams(self) -> int:
        return self._active

    def acquire_stream(self) -> bool:
        with self._streams_lock:
            if self._active >= self.config.max_streams:
                return False
            self._active += 1
            return True

    def release_stream(self) -> None:
        with self._streams_lock:
            self._active -= 1
            self._streams_lock.notify_all()

    def track(self, stream: ChatStream) -> None:
        with self._streams_lock:
            self._tracked.add(stream)

    def untrack(self, stream: ChatStream) -> None:
        with self._streams_lock:
            self._tracked.discard(stream)

    # -- connections --------------------------------------------------------

    def connection_opened(self, sock: socket.socket) -> None:
        with self._streams_lock:
            self._connections[sock] = False

    def connection_closed(self, sock: socket.socket) -> None:
        with self._streams_lock:
            self._connections.pop(sock, None)

    def mark_idle(self, sock: socket.socket, idle: bool) -> None:
        """Note whether a connection waits between requests; while draining, such a one is closed."""
        with self._streams_lock:
            if sock in self._connections:
                self._connections[sock] = idle
        if idle and self.draining:
            _shutdown(sock)

    def _shutdown_connections(self, *, idle_only: bool) -> None:
        with self._streams_lock:
            chosen = [sock for sock, idle in self._connections.items() if idle or not idle_only]
        for sock in chosen:
            _shutdown(sock)

    # -- logging ------------------------------------------------------------

    def log_line(self, record: Dict[str, Any]) -> None:
        """One line per request, text or JSON; never a secret (nothing from headers or bodies)."""
        if self.config.log_format == "json":
            line = json.dumps(record, separators=(",", ":"))  # escapes control characters itself
        else:
            record = {key: _printable(value) if isinstance(value, str) else value for key, value in record.items()}
            head = "{time} {client} {method} {path} {status} {duration_ms}ms {outcome}".format(**record)
            rest = " ".join(f"{key}={value}" for key, value in record.items()
                            if key not in ("time", "client", "method", "path", "status", "duration_ms", "outcome"))
            line = f"{head} {rest}".rstrip()
        line = gloo_stream._redact(line)
        if self._log_handler is not None:
            self._log_handler.handle(logging.makeLogRecord({"name": log.name, "levelno": logging.INFO,
                                                            "levelname": "INFO", "msg": line}))
        else:
            log.info(line)

    # -- lifecycle ----------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        # Every connection is a thread: past the cap, answer 503 on the spot (no thread) and close.
        with self._streams_lock:
            admitted = self._open_connections < self.config.max_connections
            if admitted:
                self._open_connections += 1
        if admitted:
            super().process_request(request, client_address)
            return
        self.metrics.connection_refused()
        try:
            request.setblocking(False)
            request.send(_OVERLOADED_RESPONSE)
        except OSError:
            pass
        self.shutdown_request(request, admitted=False)

    def shutdown_request(self, request: Any, admitted: bool = True) -> None:
        if admitted:
            with self._streams_lock:
                self._open_connections -= 1
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("unhandled error on a connection")

    def start(self) -> "ProxyServer":
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="gloo-proxy", daemon=True)
        self._thread.start()
        return self

    def drain(self, grace: Optional[float] = None) -> bool:
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
        deadline = time.monotonic() + grace
        with self._streams_lock:
            while self._active > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._streams_lock.wait(remaining)
            drained = self._active == 0
        return drained

    def close(self) -> None:
        """Stop at once: cut streams in flight and release the port."""
        self.draining = True
        if self._thread is not None and self._thread.is_alive():
            self.shutdown()
        with self._streams_lock:
            tracked = list(self._tracked)
        for stream in tracked:
            stream.abort()
        self._shutdown_connections(idle_only=False)
        self.server_close()

    def __enter__(self) -> "ProxyServer":
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
               "Credentials: GLOO_CLIENT_ID and GLOO_CLIENT_SECRET (or GLOO_API_KEY). "
               "Clients' key: PROXY_API_KEY (environment only, never a flag).",
    )
    option = parser.add_argument
    option("--host", help="address to bind [PROXY_HOST, default 127.0.0.1]")
    option("--port", type=int, help="port to bind [PROXY_PORT, default 3001]")
    option("--cors-origin", help="comma-separated allowed origins [PROXY_CORS_ORIGIN, default http://localhost:3000]")
    option("--max-body-bytes", type=int, help="largest request body [PROXY_MAX_BODY_BYTES, default 1048576]")
    option("--max-streams", type=int, help="streams relayed at once [PROXY_MAX_STREAMS, default 256]")
    option("--max-connections", type=int,
           help="client connections open at once, each a thread [PROXY_MAX_CONNECTIONS, default 4096]")
    option("--rate-limit-per-minute", type=int,
           help="requests per client address per minute, 0 for none [PROXY_RATE_LIMIT_PER_MINUTE, default 120]")
    option("--heartbeat-seconds", type=float,
           help="send ': keep-alive' after this much upstream silence [PROXY_HEARTBEAT_SECONDS, default 15]")
    option("--upstream-idle-seconds", type=float,
           help="give up on a silent upstream after this long [PROXY_UPSTREAM_IDLE_SECONDS, default 60]")
    option("--request-timeout-seconds", type=float,
           help="time to receive a request's headers and body [PROXY_REQUEST_TIMEOUT_SECONDS, default 10]")
    option("--write-timeout-seconds", type=float,
           help="cut off a client that stops reading [PROXY_WRITE_TIMEOUT_SECONDS, default 30]")
    option("--max-event-bytes", type=int, help="largest upstream event [PROXY_MAX_EVENT_BYTES, default 1048576]")
    option("--trusted-proxies", help="addresses/CIDRs whose X-Forwarded-For is believed [PROXY_TRUSTED_PROXIES]")
    option("--drain-seconds", type=float,
           help="on SIGTERM/SIGINT, let streams finish for this long [PROXY_DRAIN_SECONDS, default 30]")
    option("--log-format", choices=["text", "json"], help="request log format [PROXY_LOG_FORMAT, default text]")
    option("--web-root", help="folder of the page's files (default: web/ beside this file)")
    option("--offline", action="store_true", help="relay the built-in simulator (fake_gloo.py) instead of Gloo")
    return parser


def _start_offline() -> Any:
    try:
        import fake_gloo  # noqa: PLC0415 - only for --offline
    except ImportError:
        raise ConfigurationError("--offline needs fake_gloo.py beside proxy_server.py") from None
    fake = fake_gloo.FakeGloo(delay=0.03)
    fake.start()
    return fake


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the proxy until SIGTERM/SIGINT; returns the exit code."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    fake = None
    try:
        gloo_stream.load_dotenv()
        overrides = {
            "host": args.host, "port": args.port,
            "cors_origins": _split_list(args.cors_origin) if args.cors_origin is not None else None,
            "max_body_bytes": args.max_body_bytes, "max_streams": args.max_streams,
            "max_connections": args.max_connections,
            "rate_limit_per_minute": args.rate_limit_per_minute, "heartbeat_seconds": args.heartbeat_seconds,
            "upstream_idle_seconds": args.upstream_idle_seconds,
            "request_timeout_seconds": args.request_timeout_seconds,
            "write_timeout_seconds": args.write_timeout_seconds, "max_event_bytes": args.max_event_bytes,
            "trusted_proxies": _split_list(args.trusted_proxies) if args.trusted_proxies is not None else None,
            "drain_seconds": args.drain_seconds, "log_format": args.log_format, "web_root": args.web_root,
        }
        config = ProxyConfig.from_env(**overrides)
        if args.offline:
            fake = _start_offline()
            config.client_id, config.client_secret = fake.client_id, fake.client_secret
            config.token_url, config.api_url = fake.token_url, fake.api_url
            config.upstream_api_key = ""
            print(f"offline: relaying the built-in simulator at {fake.base_url} (no Gloo credentials used)",
                  file=sys.stderr)
        server = ProxyServer(config)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("hint: run with --offline to use the built-in simulator", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on {args.host or 'PROXY_HOST'}:{args.port or 'PROXY_PORT'}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2

    stopping = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("signal %d: draining streams in flight (up to %gs), then exiting", signum, config.drain_seconds)
        def stop_accepting() -> None:
            server.shutdown()  # the accept loop ends within its 50 ms poll
            try:
                server.socket.close()  # new connections are refused at once, so a balancer retries elsewhere
            except OSError:
                pass

        threading.Thread(target=stop_accepting, name="gloo-proxy-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info("gloo-stream proxy listening on %s (upstream %s, CORS %s, API key %s)", server.url,
             server.upstream_label, ",".join(config.cors_origins) or "none",
             "required" if config.api_key else "not required")
    try:
        server.serve_forever(poll_interval=0.05)  # a stop request is noticed within 50 ms
    finally:
        drained = server.drain(config.drain_seconds)
        if not drained:
            log.warning("%d stream(s) still open after %gs; closing them", server.active_streams,
                        config.drain_seconds)
        server.close()
        if fake is not None:
            fake.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
