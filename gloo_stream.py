#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""gloo_stream: stream Gloo AI chat completions token by token.

A single-file, standard-library-only client for the Gloo AI completions API (and any
OpenAI-compatible endpoint): a spec-exact Server-Sent Events decoder, a chunk
accumulator, an OAuth2 client-credentials token cache, a streaming transport with
retries before the first byte, the tutorial's functions, and a command-line tool.

    python gloo_stream.py "What is the significance of the resurrection?"

Copy this file anywhere CPython 3.9+ runs; it imports nothing outside the standard library.

At a glance, in the order a stream meets them (each section uses only those above it):

    secrets        redact(): registered credentials scrubbed from every message
    errors         GlooError and its kinds: before the stream (APIStatusError...), during it (StreamError...)
    SSE            SSEDecoder: bytes in, ServerSentEvents out (the WHATWG rules)
    chat chunks    ChatAccumulator -> ChatResult, StreamOutcome (the one verdict), structured output
    Responses      ResponseAccumulator -> ResponseResult (typed events, the same verdict)
    catalog        ModelInfo, parse_model_catalog (Gloo's model list and prices)
    configuration  explicit argument, then the environment, then .env
    transport      a keep-alive pool under urllib; _Body, the one door to a response's bytes
    OAuth          TokenCache: one fetch at a time, refreshed early
    client         GlooClient (stream, complete, respond, models) and the streams it opens
    tutorial       the tutorial's functions under their names
    command line   main(): the `python gloo_stream.py` tool
"""

from __future__ import annotations

if __name__ == "__main__":  # the command line: Ctrl-C while the modules load exits 130 quietly, as later
    import os as _os
    import signal as _signal

    _signal.signal(_signal.SIGINT, lambda signum, frame: _os._exit(130))

import argparse
import base64
import binascii
import codecs
import contextlib
import copy
import dataclasses
import email.utils
import http.client
import json
import logging
import math
import os
import random
import re
import select
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, TypeVar, Union
from collections.abc import Iterable, Iterator, Mapping, Sequence

try:
    import ssl
except ImportError:  # a Python built without OpenSSL: plain http still works
    ssl = None  # type: ignore[assignment]

__all__ = [
    # SSE decoding
    "ServerSentEvent",
    "SSEDecoder",
    # chat chunks
    "ChatAccumulator",
    "ChatResult",
    "StreamOutcome",
    "extract_token_content",
    "describe_provider_error",
    "redact",
    # Responses API events
    "ResponseAccumulator",
    "ResponseResult",
    # the model catalog
    "ModelInfo",
    "parse_model_catalog",
    # errors
    "GlooError",
    "ConfigurationError",
    "TokenError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "UnprocessableEntityError",
    "RateLimitError",
    "SpendLimitError",
    "ServerError",
    "RedirectError",
    "APIConnectionError",
    "APITimeoutError",
    "UnexpectedResponseError",
    "StreamError",
    "ConnectionLostError",
    "StreamTimeoutError",
    "ProviderError",
    "EventTooLargeError",
    # transport and high level
    "TokenCache",
    "GlooClient",
    "ChatStream",
    "ResponseStream",
    "is_grounded",
    "load_dotenv",
    "have_credentials",
    # the tutorial's functions
    "ensure_valid_token",
    "get_access_token",
    "handle_stream_error",
    "make_streaming_request",
    "parse_sse_line",
    "stream_completion",
    "render_stream_to_terminal",
    "TutorialResponse",
    "main",
]

__version__ = "1.0.0"

DEFAULT_TOKEN_URL = "https://platform.ai.gloo.com/oauth2/token"
DEFAULT_API_URL = "https://platform.ai.gloo.com/ai/v2/chat/completions"
DEFAULT_MODELS_URL = "https://platform.ai.gloo.com/platform/v2/models"  # public: no token (assumed path, README)
GUARDED_API_URL = "https://platform.ai.gloo.com/ai/v2/guarded/chat/completions"
DEFAULT_PUBLISHER = "GlooGrounded"
ENDPOINTS = ("completions", "guarded")
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
MAX_SOURCES = 50  # a grounded answer's sources kept (ChatAccumulator(max_sources=...)); more are counted
MAX_TOOL_CALLS = 128  # distinct tool-call indexes kept from one answer; more are ignored (and logged once)
_USER_AGENT = "gloo-stream/" + __version__
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_ERROR_BODY_LIMIT = 64 * 1024
_READ_SIZE = 64 * 1024
# What a read with nothing to give raises on a non-blocking socket (plain, or TLS mid-record).
_WOULD_BLOCK: tuple[type[BaseException], ...] = (
    (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError) if ssl is not None else (BlockingIOError,))

log = logging.getLogger("gloo_stream")
log.addHandler(logging.NullHandler())  # a library stays quiet unless the application configures logging


# ---------------------------------------------------------------------------
# Secrets: registered values are scrubbed from every message and header this module builds
# ---------------------------------------------------------------------------

_secrets: tuple[str, ...] = ()  # longest first; replaced whole, so reading it needs no lock
_secrets_lock = threading.Lock()
_secret_owners: dict[str, int] = {}  # each live secret and how many owners registered it


def _register_secret(value: str | None) -> None:
    """Scrub `value` from every message until each owner that registered it has forgotten it."""
    # Short values would scrub ordinary words; real secrets and tokens are long.
    global _secrets
    if value and len(value) >= 8:
        with _secrets_lock:
            _secret_owners[value] = _secret_owners.get(value, 0) + 1
            if value not in _secrets:
                _secrets = tuple(sorted(_secret_owners, key=len, reverse=True))


def _forget_secret(value: str | None) -> None:
    """One owner no longer holds `value` (a replaced token, a client gone): the registry stays small."""
    global _secrets
    with _secrets_lock:
        owners = _secret_owners.get(value or "")
        if owners is None:
            return
        if owners > 1:
            _secret_owners[value or ""] = owners - 1
            return
        del _secret_owners[value or ""]
        _secrets = tuple(sorted(_secret_owners, key=len, reverse=True))


def _forget_secrets(values: list[str]) -> None:
    for value in values:
        _forget_secret(value)
    values.clear()


def redact(text: str) -> str:
    """`text` with every registered secret (client secret, token, API key) replaced by `[redacted]`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    return text




class _Headers(dict):
    """Response header names to values; lookups ignore case (`retry-after` is `Retry-After`)."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items.items() if hasattr(items, "items") else items)
        self._names = {str(name).lower(): name for name in self}

    def _name(self, key: Any) -> Any:
        return self._names.get(key.lower(), key) if isinstance(key, str) else key

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self._name(key))

    def __contains__(self, key: Any) -> bool:
        return super().__contains__(self._name(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(self._name(key), value)
        if isinstance(key, str):
            self._names.setdefault(key.lower(), key)

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(self._name(key), default)


_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s@]*@")


def _redacted_headers(headers: Mapping[str, str] | None) -> _Headers:
    """Header values with registered secrets and any URL's user:password@ scrubbed (Location, Link...)."""
    items = headers.items() if headers is not None else ()
    return _Headers((str(name), _URL_USERINFO.sub(r"\1[redacted]@", redact(str(value)))) for name, value in items)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class GlooError(Exception):
    """Root of every error this module raises."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        return str(self)


class ConfigurationError(GlooError):
    """Missing or invalid configuration (credentials, URLs, options)."""


class TokenError(GlooError):
    """The OAuth2 token endpoint refused, failed or answered something unusable."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class APIStatusError(GlooError):
    """The completions endpoint answered a non-2xx status before the stream began.

    `code` is Gloo's string code from the body (`too_many_requests`, `forbidden`, ...) and
    `detail` the validation list of a 422 (`[{"loc", "msg", "type"}, ...]`), None when absent.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: str = "",
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = redact(body)
        self.headers = _redacted_headers(headers)
        self.retry_after = retry_after
        parsed = _parse_error_body(self.body)
        self.code: str | None = parsed.code
        self.detail: list[dict] | None = parsed.detail
        self.reason = parsed.text  # the body's own words for people ("" when it has none)
        self.spend_limit = status == 429 and parsed.spend_limit


class BadRequestError(APIStatusError):
    """400: the request was malformed."""


class AuthenticationError(APIStatusError):
    """401: the token is missing, invalid or expired."""


class PermissionDeniedError(APIStatusError):
    """403: the credentials lack permission."""


class NotFoundError(APIStatusError):
    """404: wrong URL or unknown model."""


class UnprocessableEntityError(APIStatusError):
    """422: well-formed JSON that failed validation."""


class RateLimitError(APIStatusError):
    """429: too many requests; `retry_after` says how long to wait when known."""


class SpendLimitError(RateLimitError):
    """429 because the organisation's (weekly) spend limit was reached: retrying soon will not help."""

    retryable = False


class ServerError(APIStatusError):
    """5xx (and 408): a failure on the server's side."""


class APIConnectionError(GlooError):
    """The server could not be reached (refused, DNS, TLS, reset before any answer).

    `may_have_been_processed` is True when the request had been sent whole before the connection
    was lost: the server may have read it and be generating (and billing) the answer, so it is
    never sent again on its own.
    """

    may_have_been_processed = False


class APITimeoutError(APIConnectionError):
    """Connecting, or waiting for the response headers, took too long."""


class UnexpectedResponseError(GlooError):
    """A 2xx answer that is not an event stream (wrong Content-Type, HTML, JSON)."""

    def __init__(self, message: str, *, status: int, body: str = "", content_type: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = redact(body)
        self.content_type = content_type


class StreamError(GlooError):
    """A failure after the stream began. `text` keeps the partial answer."""

    retryable = True

    def __init__(self, message: str, *, text: str = "", result: ChatResult | None = None) -> None:
        super().__init__(message)
        self.text = text
        self.result = result


class ConnectionLostError(StreamError):
    """The connection dropped, or the body ended, before the answer finished."""


class StreamTimeoutError(StreamError):
    """The server sent nothing for longer than the idle timeout, or the deadline passed."""


class ProviderError(StreamError):
    """The stream carried a structured error (`finish_reason: "error"`)."""

    def __init__(
        self,
        message: str,
        *,
        text: str = "",
        result: ChatResult | None = None,
        code: Any = None,
        name: str = "",
    ) -> None:
        super().__init__(message, text=text, result=result)
        self.code = code
        self.name = name


class EventTooLargeError(StreamError):
    """One event grew past the decoder's `max_event_bytes`."""

    retryable = False


class _ErrorBody(NamedTuple):
    code: str | None
    detail: list[dict] | None
    text: str
    spend_limit: bool


_SPEND_WORDS = ("spend", "spending", "budget", "billing", "quota", "credit", "payment")


def _parse_error_body(body: str) -> _ErrorBody:
    """What an error body says, whatever its shape: Gloo's `{"error": "<text>", "code": "<text>"}`,
    FastAPI's `{"detail": [{"loc", "msg", "type"}...]}` or `{"detail": "<text>"}`, or OpenAI's
    `{"error": {"message", "type", "code"}}`. Never raises."""
    try:
        data = json.loads(body) if body.lstrip()[:1] == "{" else None
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return _ErrorBody(None, None, "", False)
    code: Any = data.get("code")
    text = ""
    error = data.get("error")
    if isinstance(error, str):
        text = error
    elif isinstance(error, dict):
        message, kind = error.get("message"), error.get("type")
        text = message if isinstance(message, str) else kind.replace("_", " ") if isinstance(kind, str) else ""
        if code is None:
            code = error.get("code") if error.get("code") is not None else error.get("type")
    detail = data.get("detail")
    items: list[dict] | None = None
    if isinstance(detail, list):
        items = [item for item in detail if isinstance(item, dict)]
        described = [_describe_validation(item) for item in items]
        text = "; ".join(line for line in described if line) or text
    elif isinstance(detail, str) and detail:
        text = text or detail
    if not text:
        for key in ("message", "error_description"):
            value = data.get(key)
            if isinstance(value, str) and value:
                text = value
                break
    if isinstance(code, bool) or not isinstance(code, (str, int)):
        code = None
    code = str(code) if code is not None else None
    said = f"{code or ''} {text}".lower()
    return _ErrorBody(code, items, text, any(word in said for word in _SPEND_WORDS))


def _describe_validation(item: Mapping[str, Any]) -> str:
    """One FastAPI validation item as `temperature: Input should be less than or equal to 2`."""
    loc = item.get("loc")
    parts = [str(part) for part in loc if not isinstance(part, bool)] if isinstance(loc, list) else []
    if parts and parts[0] in ("body", "query", "header", "path"):
        parts = parts[1:]
    where = ""
    for part in parts:
        where += f"[{part}]" if part.isdigit() else (f".{part}" if where else part)
    message = item.get("msg")
    message = message if isinstance(message, str) else ""
    return f"{where}: {message}" if where and message else (message or where)


_STATUS_ERRORS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: ServerError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def _status_message(status: int, body: str) -> str:
    if status == 401:
        return "Authentication failed (401): Invalid or expired token"
    if status == 403:
        return "Authorization failed (403): Insufficient permissions"
    if status == 429:
        return "Rate limit exceeded (429): Too many requests"
    return f"API error ({status}): {body[:200]}"


def _describe_os_error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        exc = reason
    elif isinstance(reason, str):
        return redact(reason)
    if isinstance(exc, socket.timeout):
        return "timed out"
    text = str(exc) or exc.__class__.__name__
    return redact(text)


def _is_timeout(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", None)
    return isinstance(exc, socket.timeout) or isinstance(reason, socket.timeout) or "timed out" in str(reason or "")


def _describe_status(status: int, body: str) -> str:
    """The message of an APIStatusError: the tutorial's words for 401/403/429, else Gloo's own."""
    parsed = _parse_error_body(body)
    if status == 429 and parsed.spend_limit:
        return f"Spend limit reached (429): {parsed.text or 'the weekly spend limit was reached'}"
    if status in (401, 403, 429) or not parsed.text:
        return _status_message(status, body)
    code = f" ({parsed.code})" if parsed.code and parsed.code not in parsed.text else ""
    return f"API error ({status}): {parsed.text[:200]}{code}"


def _status_class(status: int, body: str) -> type:
    if status == 429 and _parse_error_body(body).spend_limit:
        return SpendLimitError
    return _STATUS_ERRORS.get(status) or (ServerError if status >= 500 else APIStatusError)


# ---------------------------------------------------------------------------
# SSE decoding (pure, no I/O): the WHATWG "interpreting an event stream" rules
# https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
# ---------------------------------------------------------------------------


class ServerSentEvent(NamedTuple):
    """One dispatched event: type, data, the last event id, and a `retry` field if one came.

    An immutable value (a named tuple: cheap to build, which matters at tens of thousands a second).
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None

    def json(self) -> Any:
        """The data parsed as JSON (raises ValueError when it is not JSON)."""
        return json.loads(self.data)


_BOM = b"\xef\xbb\xbf"
_MAX_RETRY_DIGITS = 10  # a longer `retry:` is no sane number of milliseconds (10 digits: 115 days)
# The fast path's shapes: a `data: X` line, and the blank line plus next `data: ` between two such events.
_DATA_PREFIX = b"data: "
_BLOCK_END = b"\n\n"
_BETWEEN_BLOCKS = _BLOCK_END + _DATA_PREFIX
_BETWEEN_BLOCKS_TEXT = _BETWEEN_BLOCKS.decode()
_new_event = tuple.__new__  # builds a ServerSentEvent without a Python-level __init__ frame


class _LineDecoder:
    """Stage 1: bytes to complete lines, whatever the read boundaries.

    feed() returns the lines one read completed as one bytes block, each line ended by LF
    (CR and CRLF become LF), or b"" when the read completed none. Lines stay bytes: stage 2
    decodes UTF-8 from whole lines only, so a character split across reads is never broken
    (invalid bytes become U+FFFD, as the spec's "UTF-8 decode" says), and sizes are in bytes.
    """

    def __init__(self) -> None:
        self.pending: list[bytes] = []  # the unterminated line's reads: joined once, so huge lines stay linear
        self.pending_size = 0  # its length in bytes
        self._head: bytes | None = b""  # the stream's first bytes, until it is known whether they are a BOM
        self._skip_lf = False  # the last read ended in CR: an LF first in the next one completes that CRLF

    def feed(self, data: bytes) -> bytes:
        if self._head is not None:
            data = self._strip_bom(self._head + data)
        if self._skip_lf and data:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        if b"\r" in data:
            # Only CR, LF and CRLF end a line (never splitlines(): it also splits on \x0b, \x1c, ...).
            # A CR that ends the read ends its line now, without waiting to see whether an LF follows.
            self._skip_lf = data[-1:] == b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = data.rfind(b"\n") + 1
        if not cut:
            if data:
                self.pending.append(data)
                self.pending_size += len(data)
            return b""
        block = data[:cut]  # the whole read when it ends with a line end: no copy
        if self.pending:
            self.pending.append(block)
            block = b"".join(self.pending)
        rest = data[cut:]
        self.pending = [rest] if rest else []
        self.pending_size = len(rest)
        return block

    def _strip_bom(self, data: bytes) -> bytes:
        # The spec's "UTF-8 decode" drops one leading BOM, even one split across reads.
        if len(data) < len(_BOM) and _BOM.startswith(data):
            self._head = data  # too short to tell yet
            return b""
        self._head = None
        return data[len(_BOM):] if data.startswith(_BOM) else data

    def discard(self) -> None:
        """Drop the unterminated line (end of body, or an oversized event)."""
        self.pending = []
        self.pending_size = 0


class SSEDecoder:
    """Turns the bytes of an event stream into events, whatever the read boundaries.

    Two stages: bytes to complete lines (`_LineDecoder`), then lines to events (the spec's line
    rules). The cost is linear in the input, even for one enormous line fed in small reads.
    """

    def __init__(self, *, max_event_bytes: int | None = None) -> None:
        self.max_event_bytes = max_event_bytes
        self.last_event_id = ""
        self.retry: int | None = None  # the stream's reconnection time, once set
        self._lines = _LineDecoder()
        # The event being received (the spec's buffers). `_size` is the bytes of its complete lines
        # with their line ends: never 0 once any line of it, even a comment, has arrived.
        self._data: list[bytes] = []
        self._size = 0
        self._event_type = b""
        self._block_retry: int | None = None
        self._deferred: EventTooLargeError | None = None

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Decode one read; returns the events it completed (often none, sometimes many).

        Raises EventTooLargeError when an event passes `max_event_bytes`; events completed
        before it in the same read are returned first, and the error comes on the next call.
        """
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error
        events: list[ServerSentEvent] = []
        try:
            block = self._lines.feed(data)
            if block and not self._data_blocks(block, events):
                self._dispatch_lines(block, events)
            limit = self.max_event_bytes
            # The event being received is its complete lines so far plus its unterminated line: this
            # grows as bytes arrive, so every way of splitting the same bytes reaches the limit alike.
            if limit is not None and self._lines.pending_size + self._size > limit:
                self._too_large(self._lines.pending_size + self._size)
        except EventTooLargeError as exc:
            if not events:
                raise
            self._deferred = exc  # the same outcome whatever the read boundaries
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of body: an unterminated last line or event is discarded, as the spec says.

        Raises an EventTooLargeError still owed from the last read.
        """
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error
        self._discard_event()
        return []

    @property
    def owes_error(self) -> bool:
        """True when the next feed() or close() will raise an EventTooLargeError."""
        return self._deferred is not None

    @property
    def has_partial_event(self) -> bool:
        """True while bytes of an event not yet dispatched are held."""
        return bool(self._lines.pending or self._data or self._event_type)

    def _dispatch_lines(self, block: bytes, events: list[ServerSentEvent]) -> None:
        # Stage 2, the spec's rules for each line. State lives in locals, written back once.
        data, size, event_type = self._data, self._size, self._event_type
        last_id, block_retry = self.last_event_id, self._block_retry
        limit = self.max_event_bytes
        oversized = 0
        lines = block.split(b"\n")
        lines.pop()  # the block ends with a line end, so its last piece is empty
        for line in lines:
            if not line:
                # A blank line dispatches the event: not one with no data, but its type resets anyway.
                if limit is not None and size > limit:
                    oversized = size
                    break
                if data:
                    events.append(ServerSentEvent(
                        event_type.decode("utf-8", "replace") if event_type else "message",
                        b"\n".join(data).decode("utf-8", "replace"), last_id, block_retry))
                    data = []
                size = 0
                event_type = b""
                block_retry = None
                continue
            size += len(line) + 1
            if line[:1] == b":":  # a line starting with a colon is a comment
                continue
            # The field name runs to the first ":" (a line with none is all name, empty value);
            # one space after the colon is removed. Unknown field names are ignored.
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event_type = value
            elif name == b"id":
                if b"\0" not in value:  # an id containing NUL is ignored
                    last_id = value.decode("utf-8", "replace")
            elif name == b"retry":
                # Only ASCII digits (bytes.isdigit() knows no others). The spec takes any number of
                # them; more than a sane count is ignored rather than raising (int() refuses 4,300+).
                if value.isdigit() and len(value) <= _MAX_RETRY_DIGITS:
                    self.retry = block_retry = int(value)
        self._data, self._size, self._event_type = data, size, event_type
        self.last_event_id, self._block_retry = last_id, block_retry
        if oversized:
            self._too_large(oversized)

    def _data_blocks(self, block: bytes, events: list[ServerSentEvent]) -> bool:
        # The fast path for the common stream, nothing but `data: X` events: a few C calls for
        # the whole block instead of the line loop. It gives exactly the events the line rules
        # give, or returns False (then the line rules run) when the block is any other shape.
        if self._size or not block.startswith(_DATA_PREFIX) or not block.endswith(_BLOCK_END):
            return False
        if self.max_event_bytes is not None and len(block) > self.max_event_bytes:
            return False  # some event may be too large: the line rules find which
        text = block.decode("utf-8", "replace")
        datas = text.split(_BETWEEN_BLOCKS_TEXT)
        if text.count("\n") != len(datas) * len(_BLOCK_END):
            return False  # some event has more than one line, or there is a run of blank lines
        datas[0] = datas[0][len(_DATA_PREFIX):]
        datas[-1] = datas[-1][:-len(_BLOCK_END)]
        last_id, new, cls = self.last_event_id, _new_event, ServerSentEvent
        events += [new(cls, ("message", data, last_id, None)) for data in datas]
        return True

    def _too_large(self, size: int) -> None:
        self._discard_event()
        raise EventTooLargeError(f"an event exceeded the {self.max_event_bytes}-byte limit "
                                 f"({size} bytes and counting)")

    def _discard_event(self) -> None:
        self._lines.discard()
        self._data = []
        self._size = 0
        self._event_type = b""
        self._block_retry = None


# ---------------------------------------------------------------------------
# Chat chunks and their accumulation
# ---------------------------------------------------------------------------


def _first_choice(chunk: Any) -> dict | None:
    if not isinstance(chunk, dict):
        return None
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def extract_token_content(chunk: Any) -> str:
    """The text a chunk carries (`choices[0].delta.content`), or "" for anything else. Never raises."""
    choice = _first_choice(chunk)
    if choice is None:
        return ""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return ""
    content = delta.get("content")
    return content if isinstance(content, str) else ""


@dataclass(frozen=True)
class StreamOutcome:
    """The one verdict on a stream: how it ended (or that it has not), decided once from its events.

    `kind` is "streaming", "finished" (a finish_reason or `[DONE]` came), "provider_error" (the
    stream carried an error) or "cut_short" (the body or the connection ended before any finish).
    """

    kind: str
    finish_reason: str | None = None
    error_name: str = ""
    error_code: Any = None
    message: str = ""
    retryable: bool = False

    @property
    def complete(self) -> bool:
        """True when the answer is whole (it may still have been stopped by a filter or a length)."""
        return self.kind == "finished"

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the fields, plus `complete`."""
        return {"kind": self.kind, "finish_reason": self.finish_reason, "complete": self.complete,
                "error_name": self.error_name, "error_code": self.error_code, "message": self.message,
                "retryable": self.retryable}


@dataclass
class ChatResult:
    """A finished (or failed) completion: the text and everything known about how it went."""

    text: str = ""
    token_count: int = 0
    duration_ms: int = 0
    finish_reason: str = "unknown"
    ttft_ms: int | None = None
    model: str | None = None
    usage: dict | None = None
    tool_calls: list[dict] = field(default_factory=list)
    error: str | None = None
    id: str | None = None
    provider: str | None = None
    sources: list[dict] = field(default_factory=list)
    sources_returned: bool | None = None
    sources_dropped: int = 0  # sources past the cap (MAX_SOURCES), counted, not kept
    model_family: str | None = None
    routing_mechanism: str | None = None
    routing_tier: str | None = None
    routing_confidence: float | None = None
    tradition: str | None = None
    outcome: StreamOutcome | None = None
    parsed: Any = None  # a response_format answer, parsed (complete(..., response_format=...))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (the shape `stream_completion` returns)."""
        return _fields_dict(self)


def _fields_dict(record: Any) -> dict[str, Any]:
    """A result's fields as a plain dict: copies, never the record's own lists; the verdict as a dict."""
    data: dict[str, Any] = {}
    for item in dataclasses.fields(record):
        value = getattr(record, item.name)
        data[item.name] = value.to_dict() if isinstance(value, StreamOutcome) else copy.deepcopy(value)
    return data


def _verdict(error: dict | None, finished: bool, reason: str | None, ended: bool, failure: str | None,
             error_name: str, retryable: bool, unfinished: str) -> StreamOutcome:
    """The one way a stream's verdict is reached, for chat and Responses streams alike: an error the
    stream carried, else finished (a finished answer stays finished whatever the transport did after),
    else cut short by the transport's `failure` or by the body's end, else still streaming."""
    if error is not None:
        return StreamOutcome("provider_error", reason or "error", str(error.get("name") or ""), error.get("code"),
                             describe_provider_error(error), error.get("retryable", True))
    if finished:
        return StreamOutcome("finished", reason)
    if failure is not None:
        return StreamOutcome("cut_short", None, error_name, None, redact(failure), retryable)
    if ended:
        return StreamOutcome("cut_short", None, error_name or "ConnectionLostError", None, unfinished, retryable)
    return StreamOutcome("streaming")


_ROUTING_KEYS = ("model", "id", "provider", "model_family", "routing_mechanism", "routing_tier", "tradition")
_SOURCE_LISTS = ("citations", "sources")
_SOURCE_EVENTS = frozenset({"citations", "sources"})


class _Accumulator:
    """What chat and Responses accumulators share: the clock, when the answer began, its first token
    and its end, and the start of a result (its duration, its verdict and the error in words)."""

    error: dict | None

    def __init__(self, *, keep_text: bool, clock: Callable[[], float], started: float | None) -> None:
        self._clock = clock
        self.started = clock() if started is None else started
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.keep_text = keep_text  # a relay that only counts tokens turns this off: memory stays flat
        self.token_count = 0
        self.error = None
        self.done = False  # the end was signalled (`[DONE]`, or a final Responses event)
        self.skipped_events = 0  # events whose data was not JSON
        self._parts: list[str] = []  # the text's pieces, joined when read: linear time

    @property
    def text(self) -> str:
        """The answer's text so far."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def _add_text(self, piece: str) -> None:
        """A piece of the answer: kept (unless only counted), counted, and the first one timed."""
        if self.keep_text:
            self._parts.append(piece)
        self.token_count += 1
        if self.first_token_at is None:
            self.first_token_at = self._clock()

    def _skip(self, data: str) -> None:
        """An event whose data is not a JSON object: counted, logged once (such a stream cannot flood the log)."""
        self.skipped_events += 1
        if self.skipped_events == 1:
            log.warning("skipped an event whose data is not a JSON object (%d bytes)", len(data))

    @property
    def ttft_ms(self) -> int | None:
        """Milliseconds from the start to the first content token, as the client saw it."""
        if self.first_token_at is None:
            return None
        return int(round((self.first_token_at - self.started) * 1000))

    def outcome(self, ended: bool = False, failure: str | None = None, *, error_name: str = "",
                retryable: bool = True) -> StreamOutcome:
        raise NotImplementedError

    def _result_basics(self, error: str | None, outcome: StreamOutcome | None) -> tuple[int, StreamOutcome,
                                                                                        str | None]:
        """(duration_ms, the verdict, the error in words) for a result snapshot."""
        end = self.finished_at if self.finished_at is not None else self._clock()
        if error is None and self.error is not None:
            error = describe_provider_error(self.error)
        return int(round((end - self.started) * 1000)), outcome or self.outcome(), error


class ChatAccumulator(_Accumulator):
    """Folds a stream into one answer: content, tool calls, finish reason, usage, sources, the verdict.

    `add_event()` interprets one event (once); `add()` folds one chunk dict. Neither raises,
    whatever the data holds. `outcome()` gives the verdict so far.
    """

    def __init__(self, *, keep_text: bool = True, clock: Callable[[], float] = time.monotonic,
                 started: float | None = None, max_sources: int = MAX_SOURCES) -> None:
        super().__init__(keep_text=keep_text, clock=clock, started=started)
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.id: str | None = None
        self.provider: str | None = None
        self.model_family: str | None = None
        self.routing_mechanism: str | None = None
        self.routing_tier: str | None = None
        self.routing_confidence: float | None = None
        self.tradition: str | None = None
        self.usage: dict | None = None
        self.sources: list[dict] = []
        self.max_sources = max_sources  # sources kept; more are counted in sources_dropped
        self.sources_dropped = 0
        self.sources_returned: bool | None = None
        self.server_ttft_ms: int | None = None
        self._tools: dict[int, dict] = {}
        self._arguments: dict[int, list[str]] = {}  # argument pieces per index, joined when read: linear time
        self._tools_capped = False
        # The chunks of the batch ChatStream.read_batch() just folded: a caller may still hand them
        # to add() the old way (parse the batch, then add() each chunk); they are not folded twice.
        self._unclaimed: list[dict] = []
        self._claimed = 0

    @property
    def tool_calls(self) -> list[dict]:
        """Tool calls merged by index, in index order."""
        for index, pieces in self._arguments.items():
            if len(pieces) > 1:
                pieces[:] = ["".join(pieces)]
            self._tools[index]["function"]["arguments"] = pieces[0] if pieces else ""
        return [self._tools[index] for index in sorted(self._tools)]

    @property
    def finished(self) -> bool:
        """True once the answer can grow no more: a finish_reason, `[DONE]` or an error came."""
        return self.finish_reason is not None or self.done or self.error is not None

    def add_event(self, event: ServerSentEvent) -> dict | None:
        """Interpret one event: `[DONE]`, a JSON chunk, `event: error`, the grounded citations event.

        Returns the chunk dict it carried, or None (`[DONE]`, data that is not a JSON object).
        This is the one place an event's meaning is decided; everything else reads the result.
        """
        data = event.data
        if data == "[DONE]":
            self.done = True
            return None
        is_error = event.event == "error"
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            if is_error:  # `event: error` with plain text: the text is the message
                self._set_error({"message": data})
            else:
                self._skip(data)
            return None
        if is_error:
            inner = chunk.get("error") if isinstance(chunk, dict) else None
            self._set_error(inner if isinstance(inner, dict) else chunk)
        elif event.event in _SOURCE_EVENTS and isinstance(chunk, list):
            self._add_sources(chunk)  # a named event whose data is the list itself
            return None
        if not isinstance(chunk, dict):
            return None
        self._fold(chunk)
        return chunk

    def add(self, chunk: Any) -> str:
        """Fold one chunk in; returns the content it carried ("" if none)."""
        if not isinstance(chunk, dict):
            return ""
        unclaimed = self._unclaimed
        if unclaimed:
            at = self._claimed
            if at < len(unclaimed) and (unclaimed[at] is chunk or unclaimed[at] == chunk):
                self._claimed = at + 1
                return extract_token_content(chunk)  # add_event() folded it already
            self._unclaimed = []
        return self._fold(chunk)

    def _set_error(self, error: Any) -> None:
        if self.error is None:
            self.error = _error_fields(error)
        if self.finish_reason is None:
            self.finish_reason = "error"

    def _fold(self, chunk: dict) -> str:
        for key in _ROUTING_KEYS:
            value = chunk.get(key)
            if isinstance(value, str) and value:
                setattr(self, key, value)
        routing = chunk.get("routing")  # liberal: some gateways nest the routing metadata
        if isinstance(routing, dict):
            for key in _ROUTING_KEYS[2:]:
                value = routing.get(key) or routing.get(key.replace("routing_", ""))
                if isinstance(value, str) and value:
                    setattr(self, key, value)
            self._set_confidence(routing.get("confidence", routing.get("routing_confidence")))
        self._set_confidence(chunk.get("routing_confidence"))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        ttft = chunk.get("ttft_ms")
        if (isinstance(ttft, (int, float)) and not isinstance(ttft, bool) and self.server_ttft_ms is None
                and math.isfinite(ttft)):
            self.server_ttft_ms = int(ttft)
        returned = chunk.get("sources_returned")
        if isinstance(returned, bool):
            self.sources_returned = returned
        for key in _SOURCE_LISTS:
            sources = chunk.get(key)
            if isinstance(sources, list):
                self._add_sources(sources)
                break
        error = chunk.get("error")
        choice = _first_choice(chunk)
        content = ""
        if choice is not None:
            if error is None:
                error = choice.get("error")
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
            delta = choice.get("delta")
            if isinstance(delta, dict):
                value = delta.get("content")
                if isinstance(value, str) and value:
                    content = value
                    self._add_text(value)
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for call in calls:
                        self._merge_tool_call(call)
        if error is not None and error is not False and error != "":
            # The latest error object is the one that counts; Gloo's flat {"error": "<text>", "code": ...} too.
            self.error = _error_fields(chunk if isinstance(error, str) and "code" in chunk else error)
            if self.finish_reason is None:
                self.finish_reason = "error"
        return content

    def _set_confidence(self, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.routing_confidence = float(value)

    def _add_sources(self, items: list[Any]) -> None:
        for item in items:
            source = _source_fields(item)
            if source is None:
                continue
            if len(self.sources) < self.max_sources:
                self.sources.append(source)
            else:  # a stream of endless citation lists costs nothing beyond the cap
                self.sources_dropped += 1
                if self.sources_dropped == 1:
                    log.warning("kept the first %d sources of one answer; more are counted, not kept", self.max_sources)
        if self.sources and self.sources_returned is None:
            self.sources_returned = True

    def _merge_tool_call(self, call: Any) -> None:
        if not isinstance(call, dict):
            return
        index = call.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            return
        merged = self._tools.get(index)
        if merged is None:
            if len(self._tools) >= MAX_TOOL_CALLS:
                if not self._tools_capped:
                    self._tools_capped = True
                    log.warning("ignored tool calls beyond the first %d of one answer", MAX_TOOL_CALLS)
                return
            merged = self._tools[index] = {"index": index, "id": None, "type": "function",
                                           "function": {"name": None, "arguments": ""}}
            self._arguments[index] = []
        for key in ("id", "type"):
            value = call.get(key)
            if isinstance(value, str) and value:
                merged[key] = value
        function = call.get("function")
        if isinstance(function, dict):
            name = function.get("name")
            if isinstance(name, str) and name:
                merged["function"]["name"] = name
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                self._arguments[index].append(arguments)

    def outcome(self, ended: bool = False, failure: str | None = None, *, error_name: str = "",
                retryable: bool = True) -> StreamOutcome:
        """The verdict so far. `ended`: the body ended (or the stream was closed); `failure`: why the
        transport failed, if it did. A finished answer stays finished whatever the transport did after.
        """
        return _verdict(self.error, self.finish_reason is not None or self.done, self.finish_reason, ended, failure,
                        error_name, retryable, "the stream ended before the answer finished")

    def result(self, *, error: str | None = None, outcome: StreamOutcome | None = None) -> ChatResult:
        """A snapshot of what has been accumulated (`outcome` defaults to `self.outcome()`)."""
        duration_ms, outcome, error = self._result_basics(error, outcome)
        return ChatResult(
            text=self.text,
            token_count=self.token_count,
            duration_ms=duration_ms,
            finish_reason=self.finish_reason or "unknown",
            ttft_ms=self.ttft_ms,
            model=self.model,
            usage=self.usage,
            tool_calls=_copy_tool_calls(self.tool_calls),
            error=error,
            id=self.id,
            provider=self.provider,
            sources=[dict(source) for source in self.sources],
            sources_returned=self.sources_returned,
            sources_dropped=self.sources_dropped,
            model_family=self.model_family,
            routing_mechanism=self.routing_mechanism,
            routing_tier=self.routing_tier,
            routing_confidence=self.routing_confidence,
            tradition=self.tradition,
            outcome=outcome,
        )


def _copy_tool_calls(calls: list[dict]) -> list[dict]:
    """Copies deep enough that a caller changing one never changes the accumulator's."""
    return [dict(call, function=dict(call["function"])) for call in calls]


def _first_text(item: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _source_fields(item: Any) -> dict | None:
    """One citation as a dict with at least `title` and `url` (None when the item is unusable).

    Liberal in what it takes: `url`/`link`/`uri`/`source_url` for the address, `title`/`name` for
    the label; every other key is kept as it came.
    """
    if isinstance(item, str) and item:
        return {"title": item, "url": item if item.startswith(("http://", "https://")) else None}
    if not isinstance(item, dict):
        return None
    source = dict(item)
    source["url"] = _first_text(item, ("url", "link", "uri", "source_url", "href"))
    source["title"] = _first_text(item, ("title", "name", "label")) or source["url"]
    return source


def _error_fields(error: Any) -> dict:
    if isinstance(error, dict):
        message = error.get("message")
        if not message:  # Gloo's body shape: {"error": "<text>", "code": "<text>"}; or {"detail": "<text>"}
            message = next((error[k] for k in ("error", "detail") if isinstance(error.get(k), str)), "")
        fields = {
            "code": error.get("code"),
            "name": str(error.get("name") or error.get("type") or ""),
            "message": str(message or ""),
        }
        if isinstance(error.get("retryable"), bool):
            fields["retryable"] = error["retryable"]
        return fields
    return {"code": None, "name": "", "message": "" if error is None else str(error)}


def describe_provider_error(error: Mapping[str, Any]) -> str:
    """A human line for a stream's error object: `NAME (code): message`, secrets redacted.

    Takes the accumulator's `error` or the raw object (`name`/`type`, `code`, `message`/`error`).
    """
    if not isinstance(error, Mapping):
        error = _error_fields(error)
    elif set(error) - {"code", "name", "message", "retryable"}:
        error = _error_fields(dict(error))
    label = error.get("name") or "error"
    if error.get("code") is not None and str(error["code"]) != label:
        label = f"{label} ({error['code']})"
    message = error.get("message")
    return redact(f"{label}: {message}" if message else str(label))




_STRUCTURED_TOOL = "structured_answer"  # the forced tool that carries a response_format answer
_RESPONSE_FORMAT_SHAPES = ('response_format must be {"type": "text"}, {"type": "json_object"} or '
                           '{"type": "json_schema", "json_schema": {"name", "schema"}}')


def _structured_schema(response_format: Any) -> Any:
    """The schema a `response_format` asks for (`json_object`: any object), None for text or none;
    a ConfigurationError for any other shape."""
    if response_format is None or (isinstance(response_format, dict) and response_format.get("type") == "text"):
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return {"type": "object"}
    spec = response_format.get("json_schema") if kind == "json_schema" else None
    if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
        return spec["schema"]
    raise ConfigurationError(_RESPONSE_FORMAT_SHAPES)


def _structured_tools(payload: dict[str, Any], schema: Any) -> None:
    """OpenAI's `response_format` carried out the way Gloo can (it documents no such field): a forced
    call of one tool whose parameters are the schema; its arguments are the answer."""
    if payload.get("tools") or payload.get("tool_choice"):
        raise ConfigurationError("response_format together with tools cannot be carried out through Gloo "
                                 "(it becomes a forced tool call): send one or the other")
    payload["tools"] = [{"type": "function", "function": {
        "name": _STRUCTURED_TOOL, "description": "Give the answer in exactly this JSON shape.", "parameters": schema}}]
    payload["tool_choice"] = "required"


def _structured_text(accumulator: Any) -> str:
    """A structured answer's JSON text: the forced call's arguments (or, from a model that answered in
    text anyway, the text)."""
    calls = accumulator.tool_calls
    return calls[0]["function"]["arguments"] if calls else accumulator.text


def _check_structured(text: str, schema: Any) -> str | None:
    """Why a structured answer does not fit (not JSON, or missing required keys, or a wrong top-level
    type), or None. A cheap check, not a full JSON Schema validator."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return "the model's structured answer is not valid JSON"
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object":
        if not isinstance(value, dict):
            return "the model's structured answer is not a JSON object"
        required = schema.get("required")
        missing = [key for key in required if key not in value] if isinstance(required, list) else []
        if missing:
            return f"the model's structured answer lacks {', '.join(map(str, missing))}"
    return None


def _structured_result(result: ChatResult, accumulator: Any, schema: Any) -> None:
    """A finished response_format answer as its JSON: text, `parsed`, and no tool call left over."""
    if result.outcome is None or not result.outcome.complete:
        return
    result.text, result.tool_calls = _structured_text(accumulator), []
    if result.finish_reason == "tool_calls":
        result.finish_reason = "stop"
    problem = _check_structured(result.text, schema)
    if problem is not None:
        result.error = result.error or problem
    else:
        result.parsed = json.loads(result.text)


# ---------------------------------------------------------------------------
# Responses API events and their accumulation
# ---------------------------------------------------------------------------
#
# The Responses API streams typed events (`event:` names equal to the data's `type`, each with a
# `sequence_number`): `response.created`, output items added and done, text and function-call
# argument deltas, reasoning summary deltas, then one of `response.completed`, `response.incomplete`,
# `response.failed`, or an `error` event. Gloo says its shapes mirror OpenAI's; where its pages are
# silent, OpenAI's Responses API is followed.

_RESPONSE_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
_RESPONSE_ROUTING = ("provider", "model_family", "routing_mechanism", "routing_tier", "tradition")


@dataclass
class ResponseResult:
    """A finished (or failed) Responses API answer: its text, typed output items and how it went."""

    id: str | None = None
    status: str | None = None  # "completed", "incomplete", "failed", or the last seen ("in_progress")
    text: str = ""
    output: list[dict] = field(default_factory=list)  # the typed output items, in output order
    function_calls: list[dict] = field(default_factory=list)  # {id, call_id, name, arguments}
    reasoning: str = ""  # the reasoning summary's text
    images: list[dict] = field(default_factory=list)  # image_generation_call items that carry a result
    usage: dict | None = None  # input_tokens, output_tokens, total_tokens
    token_count: int = 0  # text deltas received
    ttft_ms: int | None = None
    duration_ms: int = 0
    model: str | None = None
    incomplete_reason: str | None = None
    error: str | None = None
    provider: str | None = None
    model_family: str | None = None
    routing_mechanism: str | None = None
    routing_tier: str | None = None
    tradition: str | None = None
    sequence_gaps: int = 0  # sequence numbers that did not follow the one before
    outcome: StreamOutcome | None = None

    @property
    def finish_reason(self) -> str:
        """How the answer ended, in a chat answer's words: "completed", an incomplete reason, "error"."""
        return (self.outcome.finish_reason if self.outcome is not None else None) or "unknown"

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the fields (JSON-ready)."""
        return _fields_dict(self)


class ResponseAccumulator(_Accumulator):
    """Folds a Responses API event stream into one answer: text, output items, function calls with
    their arguments (joined in linear time), the reasoning summary, usage, the verdict.

    `add_event()` interprets one event (once) and never raises, whatever the data holds; events of
    a type it does not know are counted and kept by the stream, never an error.
    """

    def __init__(self, *, keep_text: bool = True, clock: Callable[[], float] = time.monotonic,
                 started: float | None = None) -> None:
        super().__init__(keep_text=keep_text, clock=clock, started=started)
        self._reasoning: list[str] = []
        self.id: str | None = None
        self.model: str | None = None
        self.status: str | None = None
        self.usage: dict | None = None
        self.routing: dict[str, str] = {}
        self.incomplete_reason: str | None = None
        self.sequence: int | None = None
        self.sequence_gaps = 0
        self.unknown_events = 0
        self.response: dict | None = None  # the final response object (response.completed and the like)
        self._items: dict[int, dict] = {}  # output_index -> item
        self._arguments: dict[int, list[str]] = {}  # output_index -> argument pieces, joined when read

    # -- what has been folded -------------------------------------------------

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    @property
    def output(self) -> list[dict]:
        """The output items so far, in output order, function-call arguments joined."""
        items = []
        for index in sorted(self._items):
            item = self._items[index]
            pieces = self._arguments.get(index)
            if pieces is not None:
                if len(pieces) > 1:
                    pieces[:] = ["".join(pieces)]
                item["arguments"] = pieces[0] if pieces else ""
            items.append(item)
        return items

    @property
    def function_calls(self) -> list[dict]:
        return [{"id": item.get("id"), "call_id": item.get("call_id"), "name": item.get("name"),
                 "arguments": item.get("arguments", "")}
                for item in self.output if item.get("type") == "function_call"]

    @property
    def finished(self) -> bool:
        """True once the answer can grow no more: a final event, or an error, came."""
        return self.done or self.error is not None

    # -- folding --------------------------------------------------------------

    def add_event(self, event: ServerSentEvent) -> dict | None:
        """Interpret one event; returns its JSON object (None for data that is not a JSON object)."""
        data = event.data
        if data == "[DONE]":  # not in the Responses API, but some gateways add it
            self.done = True
            return None
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            if event.event == "error":
                self._set_error({"message": data})
            else:
                self._skip(data)
            return None
        kind = obj.get("type")
        if not isinstance(kind, str):
            kind = obj["type"] = event.event  # the SSE event name says what the data does not
        self._note_sequence(obj.get("sequence_number"))
        fold = _RESPONSE_FOLDS.get(kind)
        if fold is None:
            self.unknown_events += 1
        else:
            fold(self, obj)
        if kind in _RESPONSE_FINAL:
            self.done = True
        return obj

    def _note_sequence(self, number: Any) -> None:
        if not isinstance(number, int) or isinstance(number, bool):
            return
        if self.sequence is not None and number != self.sequence + 1:
            self.sequence_gaps += 1
            if self.sequence_gaps == 1:
                log.warning("the event stream skipped from sequence number %d to %d", self.sequence, number)
        self.sequence = number

    def _take_response(self, obj: dict) -> dict | None:
        response = obj.get("response")
        if not isinstance(response, dict):
            return None
        for key in ("id", "model", "status"):
            value = response.get(key)
            if isinstance(value, str) and value:
                setattr(self, key, value)
        for key in _RESPONSE_ROUTING:
            value = response.get(key)
            if isinstance(value, str) and value:
                self.routing[key] = value
        usage = response.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        return response

    def _on_response(self, obj: dict) -> None:
        self._take_response(obj)

    def _on_final(self, obj: dict) -> None:
        response = self._take_response(obj)
        if response is None:
            return
        self.response = response
        output = response.get("output")
        if isinstance(output, list) and output:  # the final word on every item
            self._items = {index: dict(item) for index, item in enumerate(output) if isinstance(item, dict)}
            self._arguments = {index: [item["arguments"]] for index, item in self._items.items()
                               if item.get("type") == "function_call" and isinstance(item.get("arguments"), str)}
            if not self._parts:  # a server that sent no deltas: the text from the items
                self._parts = [_output_text(self._items.values())]
        details = response.get("incomplete_details")
        if isinstance(details, dict) and isinstance(details.get("reason"), str):
            self.incomplete_reason = details["reason"]
        if obj.get("type") == "response.incomplete" and self.incomplete_reason is None:
            self.incomplete_reason = "unknown"
        if obj.get("type") == "response.failed":
            error = response.get("error")
            self._set_error(error if isinstance(error, dict) else {"message": "the response failed"})

    def _on_error(self, obj: dict) -> None:
        inner = obj.get("error")  # {"type": "error", "code", "message", "param"}, or an error object inside
        self._set_error(inner if isinstance(inner, dict) else {k: v for k, v in obj.items() if k != "type"})

    def _set_error(self, error: dict) -> None:
        if self.error is None:
            self.error = _error_fields(error)
            if isinstance(error.get("code"), str) and error["code"]:
                self.error["name"] = self.error["name"] or error["code"]  # OpenAI's codes are names
        self.status = "failed"

    def _index(self, obj: dict) -> int | None:
        index = obj.get("output_index")
        return index if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < 10_000 else None

    def _on_item(self, obj: dict) -> None:
        index, item = self._index(obj), obj.get("item")
        if index is None or not isinstance(item, dict):
            return
        self._items[index] = dict(item)
        if item.get("type") == "function_call":
            arguments = item.get("arguments")
            if isinstance(arguments, str) and (arguments or index not in self._arguments):
                self._arguments[index] = [arguments]

    def _on_text_delta(self, obj: dict) -> None:
        delta = obj.get("delta")
        if isinstance(delta, str) and delta:
            self._add_text(delta)

    def _on_arguments_delta(self, obj: dict) -> None:
        index, delta = self._index(obj), obj.get("delta")
        if index is not None and isinstance(delta, str):
            self._arguments.setdefault(index, []).append(delta)

    def _on_arguments_done(self, obj: dict) -> None:
        index, arguments = self._index(obj), obj.get("arguments")
        if index is not None and isinstance(arguments, str):
            self._arguments[index] = [arguments]

    def _on_reasoning_delta(self, obj: dict) -> None:
        delta = obj.get("delta")
        if isinstance(delta, str):
            self._reasoning.append(delta)

    # -- the verdict ----------------------------------------------------------

    def outcome(self, ended: bool = False, failure: str | None = None, *, error_name: str = "",
                retryable: bool = True) -> StreamOutcome:
        """The verdict so far, in the chat streams' vocabulary: an incomplete answer is "finished" with
        its reason as the finish reason (as a chat answer cut at `max_tokens` is, with "length")."""
        finished = self.status == "completed" or self.done or self.incomplete_reason is not None
        reason = None if self.error is not None else self.incomplete_reason or "completed"
        return _verdict(self.error, finished, reason, ended, failure, error_name, retryable,
                        "the stream ended before the response completed")

    def result(self, *, error: str | None = None, outcome: StreamOutcome | None = None) -> ResponseResult:
        duration_ms, outcome, error = self._result_basics(error, outcome)
        output = self.output
        return ResponseResult(
            id=self.id, status=self.status, text=self.text, output=copy.deepcopy(output),
            function_calls=self.function_calls, reasoning=self.reasoning,
            images=[dict(item) for item in output
                    if item.get("type") == "image_generation_call" and item.get("result")],
            usage=self.usage, token_count=self.token_count, ttft_ms=self.ttft_ms,
            duration_ms=duration_ms, model=self.model,
            incomplete_reason=self.incomplete_reason, error=error, sequence_gaps=self.sequence_gaps,
            outcome=outcome, **{key: self.routing.get(key) for key in _RESPONSE_ROUTING},
        )


def _output_text(items: Iterable[dict]) -> str:
    """The text of a response's message items (`output_text` parts)."""
    parts: list[str] = []
    for item in items:
        if item.get("type") == "message" and isinstance(item.get("content"), list):
            parts.extend(part["text"] for part in item["content"]
                         if isinstance(part, dict) and part.get("type") == "output_text"
                         and isinstance(part.get("text"), str))
    return "".join(parts)


_RESPONSE_FOLDS: dict[str, Callable[[ResponseAccumulator, dict], None]] = {
    "response.created": ResponseAccumulator._on_response,
    "response.queued": ResponseAccumulator._on_response,
    "response.in_progress": ResponseAccumulator._on_response,
    "response.output_item.added": ResponseAccumulator._on_item,
    "response.output_item.done": ResponseAccumulator._on_item,
    "response.output_text.delta": ResponseAccumulator._on_text_delta,
    "response.function_call_arguments.delta": ResponseAccumulator._on_arguments_delta,
    "response.function_call_arguments.done": ResponseAccumulator._on_arguments_done,
    "response.reasoning_summary_text.delta": ResponseAccumulator._on_reasoning_delta,
    "response.completed": ResponseAccumulator._on_final,
    "response.incomplete": ResponseAccumulator._on_final,
    "response.failed": ResponseAccumulator._on_final,
    "error": ResponseAccumulator._on_error,
}
# Known and nothing to fold: the parts, and the `.done` events whose content the deltas carried.
for _kind in ("response.content_part.added", "response.content_part.done", "response.output_text.done",
              "response.reasoning_summary_part.added", "response.reasoning_summary_part.done",
              "response.reasoning_summary_text.done", "response.output_text.annotation.added",
              "response.image_generation_call.in_progress", "response.image_generation_call.generating",
              "response.image_generation_call.partial_image", "response.image_generation_call.completed"):
    _RESPONSE_FOLDS[_kind] = lambda accumulator, obj: None
del _kind


# ---------------------------------------------------------------------------
# Gloo's model catalog (pure: parsing and prices; `GlooClient.models()` fetches it)
# ---------------------------------------------------------------------------
#
# Gloo lists its models publicly (no token) under https://platform.ai.gloo.com/platform/v2/; its
# pages name the service ("list available models, pricing, and context windows") but not the path or
# the fields. Assumed (README): `GET /platform/v2/models`, a JSON list of models (bare, or under
# `data` / `models`), each with an id and, where known, a family, a context window, capabilities and
# prices in USD per million tokens. The parser takes the common spellings of each field and keeps a
# model whose other fields it cannot read; an OpenAI-style `/v1/models` list parses too.

_CATALOG_LIMIT = 2000  # models kept from one catalog; a longer list is cut (and logged)


@dataclass(frozen=True)
class ModelInfo:
    """One model of a catalog: what it is called, what it can do and what it costs (USD per 1M tokens)."""

    id: str
    name: str | None = None
    family: str | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    capabilities: tuple[str, ...] = ()
    input_price: float | None = None
    output_price: float | None = None

    def cost(self, usage: Mapping[str, Any] | None) -> float | None:
        """What an answer with this `usage` cost in USD (chat or Responses token names), or None
        when the usage or a price is missing."""
        if not isinstance(usage, Mapping) or self.input_price is None or self.output_price is None:
            return None
        prompt = _count(usage, ("prompt_tokens", "input_tokens"))
        completion = _count(usage, ("completion_tokens", "output_tokens"))
        if prompt is None and completion is None:
            return None
        return ((prompt or 0) * self.input_price + (completion or 0) * self.output_price) / 1_000_000

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "capabilities": list(self.capabilities)}


def _count(obj: Mapping[str, Any], keys: Sequence[str]) -> int | None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _price(value: Any) -> float | None:
    """A price from a number or a numeric string ("$0.25" too), never negative, NaN or infinite."""
    if isinstance(value, str):
        value = value.strip().lstrip("$")
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


def _first_of(obj: Mapping[str, Any], keys: Sequence[str], read: Callable[[Any], Any]) -> Any:
    for key in keys:
        if key in obj:
            value = read(obj[key])
            if value is not None:
                return value
    return None


_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _text_field(value: Any) -> str | None:
    """A short printable string, or None (a catalog's text reaches terminals and pages)."""
    if not isinstance(value, str) or not value.strip() or _CONTROL_CHARS.search(value):
        return None
    return value.strip()[:200]


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _model_prices(item: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(input, output) in USD per million tokens, from `pricing: {...}` or flat fields."""
    nested = item.get("pricing")
    pricing: Mapping[str, Any] = nested if isinstance(nested, Mapping) else item
    per_token = isinstance(pricing.get("prompt"), (str, int, float)) and "input" not in pricing
    inputs = ("input_per_million", "input", "input_price", "input_cost_per_million", "prompt")
    outputs = ("output_per_million", "output", "output_price", "output_cost_per_million", "completion")
    prices = (_first_of(pricing, inputs, _price), _first_of(pricing, outputs, _price))
    if per_token:  # OpenRouter's `pricing: {prompt, completion}` is USD per token
        return tuple(None if p is None else round(p * 1_000_000, 6) for p in prices)  # type: ignore[return-value]
    return prices


def _capabilities(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, Mapping):  # {"tools": true, "vision": false}
        value = [key for key, on in value.items() if on is True]
    if not isinstance(value, list):
        return None
    names = [item.strip().lower() for item in value if isinstance(item, str) and item.strip()]
    return tuple(dict.fromkeys(name[:40] for name in names))[:32]


def parse_model_catalog(data: Any) -> list[ModelInfo]:
    """The models of a catalog document (Gloo's, or an OpenAI-style `{"data": [...]}`), in its order,
    each id once; entries without a usable id are skipped. Never raises on a strange document."""
    if isinstance(data, Mapping):
        data = next((data[key] for key in ("data", "models", "items") if isinstance(data.get(key), list)), None)
    if not isinstance(data, list):
        return []
    models: dict[str, ModelInfo] = {}
    for item in data:
        if isinstance(item, str):
            item = {"id": item}
        if not isinstance(item, Mapping):
            continue
        model_id = _first_of(item, ("id", "model_id", "model", "slug"), _text_field)
        if model_id is None or model_id in models:
            continue
        if len(models) >= _CATALOG_LIMIT:
            log.warning("the model catalog lists more than %d models; the rest are left out", _CATALOG_LIMIT)
            break
        input_price, output_price = _model_prices(item)
        models[model_id] = ModelInfo(
            id=model_id,
            name=_first_of(item, ("name", "display_name", "title"), _text_field),
            family=_first_of(item, ("family", "model_family", "provider", "owned_by"), _text_field),
            context_window=_first_of(item, ("context_window", "context_length", "max_context_tokens",
                                            "max_input_tokens"), _positive_int),
            max_output_tokens=_first_of(item, ("max_output_tokens", "max_completion_tokens"), _positive_int),
            capabilities=_first_of(item, ("capabilities", "features", "modalities"), _capabilities) or (),
            input_price=input_price, output_price=output_price,
        )
    return list(models.values())


# ---------------------------------------------------------------------------
# Configuration: explicit argument, then the environment, then .env
# ---------------------------------------------------------------------------

# Values a copied .env.example still holds: never real credentials, so they count as unset.
_PLACEHOLDER_PREFIXES = ("your-", "your_")


def _is_placeholder(value: str) -> bool:
    value = value.strip().lower()
    return value.startswith(_PLACEHOLDER_PREFIXES) or (value.startswith("<") and value.endswith(">"))


@dataclass(frozen=True)
class _DotenvReport:
    """What the last load_dotenv() found, so a missing-credentials message can say where it looked."""

    path: str
    found: bool
    keys: tuple[str, ...] = ()
    placeholders: tuple[str, ...] = ()


_last_dotenv: _DotenvReport | None = None


def _parse_dotenv(text: str, *, problems: list[tuple[int, str]] | None = None) -> dict[str, str]:
    """KEY=VALUE pairs of a .env text; lines that are not assignments go to `problems` as (line, why)."""
    values: dict[str, str] = {}
    if text.startswith("\ufeff"):  # a BOM from Windows editors is not part of the first key
        text = text[1:]
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[7:].lstrip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq:
            if problems is not None:
                problems.append((number, "no '=' (expected KEY=VALUE); ignored"))
            continue
        if not key or not key.replace("_", "").replace(".", "").isalnum():
            if problems is not None:
                problems.append((number, f"{key!r} is not a variable name; ignored"))
            continue
        value = value.strip()
        if value[:1] in ("'", '"'):
            quote = value[0]
            end = value.find(quote, 1)
            while quote == '"' and end > 0 and value[end - 1] == "\\":
                end = value.find(quote, end + 1)
            if end < 0 and problems is not None:
                problems.append((number, f"the {quote} quote is never closed; the value runs to the line's end"))
            inner = value[1:end] if end > 0 else value[1:]
            if quote == '"':
                inner = (inner.replace("\\n", "\n").replace("\\t", "\t")
                         .replace('\\"', '"').replace("\\\\", "\\"))
            value = inner
        else:
            hash_at = value.find(" #")
            if hash_at >= 0:
                value = value[:hash_at].rstrip()
        values[key] = value
    return values


def _line_of(data: bytes, offset: int) -> int:
    head = data[:offset]
    return head.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1


# A .env may not choose where a credential taken from the environment goes (issue #19.11).
_CREDENTIAL_SETTINGS = ("GLOO_CLIENT_SECRET", "GLOO_API_KEY")
_ENDPOINT_SETTINGS = ("GLOO_TOKEN_URL", "GLOO_API_URL", "GLOO_RESPONSES_URL", "GLOO_MODELS_URL", "HTTPS_PROXY",
                      "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def load_dotenv(path: str | os.PathLike = ".env", *, override: bool = False) -> dict[str, str]:
    """Read KEY=VALUE lines from `path` into os.environ; existing variables win unless `override`.

    Handles a UTF-8 BOM, CRLF, comments, `export ` prefixes and quotes; warns (logging) about lines
    that are not assignments and about placeholder values copied from .env.example, which are
    left unset. Returns the values applied or available (empty when there is no file). Refuses
    (ConfigurationError, nothing applied) a file that would set an endpoint or proxy for a
    credential exported in the environment: a .env in the working folder must not redirect it.
    """
    global _last_dotenv
    where = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        _last_dotenv = _DotenvReport(where, found=False)
        return {}
    except OSError as exc:
        raise ConfigurationError(f"cannot read {where}: {exc.strerror or exc.__class__.__name__}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{where} line {_line_of(data, exc.start)} is not UTF-8 text (byte 0x{data[exc.start]:02x}): "
            "save the file as UTF-8") from None
    problems: list[tuple[int, str]] = []
    values = _parse_dotenv(text, problems=problems)
    for number, why in problems:
        log.warning("%s line %d: %s", where, number, why)
    placeholders = tuple(key for key, value in values.items() if value and _is_placeholder(value))
    if placeholders:
        log.warning("%s: %s still hold%s the example value%s from .env.example; treated as unset",
                    where, ", ".join(placeholders), "s" if len(placeholders) == 1 else "",
                    "" if len(placeholders) == 1 else "s")
    values = {key: value for key, value in values.items() if key not in placeholders}
    _last_dotenv = _DotenvReport(where, found=True, keys=tuple(values), placeholders=placeholders)
    applied = {key for key in values if override or key not in os.environ}
    exported = [key for key in _CREDENTIAL_SETTINGS if os.environ.get(key) and key not in applied]
    redirecting = [key for key in _ENDPOINT_SETTINGS if key in applied]
    if exported and redirecting:
        # A .env in whatever folder a command runs from must not send exported secrets to its own server.
        raise ConfigurationError(
            f"{where} sets {', '.join(redirecting)}, and {', '.join(exported)} come{'s' if len(exported) == 1 else ''} "
            "from the environment: that .env would send them to the address it names, so nothing was used. "
            f"Set {', '.join(redirecting)} in the environment as well, or put the credentials in that .env too")
    for key, value in values.items():
        if override or key not in os.environ:
            os.environ[key] = value
    return values


def have_credentials() -> bool:
    """True when GLOO_API_KEY, or GLOO_CLIENT_ID and GLOO_CLIENT_SECRET, are set (placeholders do not count)."""
    return bool(_setting(None, "GLOO_API_KEY")
                or (_setting(None, "GLOO_CLIENT_ID") and _setting(None, "GLOO_CLIENT_SECRET")))


def _credentials_help() -> str:
    """Why no credentials were found, naming the .env searched (one line, for error messages)."""
    missing = [name for name in ("GLOO_CLIENT_ID", "GLOO_CLIENT_SECRET") if not _setting(None, name)]
    message = (f"missing Gloo credentials: set {' and '.join(missing) or 'GLOO_CLIENT_ID and GLOO_CLIENT_SECRET'} "
               "(or GLOO_API_KEY) in the environment or in .env")
    report = _last_dotenv
    placeholders = [name for name in os.environ if name.startswith("GLOO_") and _is_placeholder(os.environ[name])]
    if report is None:
        pass
    elif not report.found:
        message += f" (there is no .env in {os.path.dirname(report.path)})"
    elif report.placeholders:
        message += (f" ({report.path} still holds the placeholder values from .env.example for "
                    f"{', '.join(report.placeholders)}: put your credentials from Gloo AI Studio there)")
    else:
        message += f" ({report.path} sets none of them)"
    if placeholders and not (report and report.placeholders):
        message += f"; the environment holds placeholder values for {', '.join(placeholders)}"
    return message


def _setting(explicit: str | None, name: str, default: str | None = None) -> str | None:
    if explicit is not None:
        return explicit
    value = os.environ.get(name)
    return value if value and not _is_placeholder(value) else default


# ---------------------------------------------------------------------------
# Transport plumbing: sockets, responses and a keep-alive pool under urllib.request
# ---------------------------------------------------------------------------
#
# urllib.request opens one connection per request and closes it ("Connection: close"); over
# TLS that costs a TCP and a TLS handshake, and a fresh CA store, every time. The handler
# below keeps connections alive in a bounded pool instead. A response decides, when it is
# closed, whether its connection goes back: only when its body was read to the end cleanly.


class _SocketReader:
    """The buffered reader under a streaming http.client response.

    Like the BufferedReader that `socket.makefile` gives, with two differences a relay needs:
    it says how many bytes it holds (`buffered`), so a caller can poll the socket without
    stalling on data already read; and a read timeout leaves it usable (SocketIO is poisoned
    by its first timeout).
    """

    def __init__(self, file: Any, sock: socket.socket, *, deadline: float | None = None) -> None:
        self._file = file  # the makefile() object: it keeps the socket open while the response lives
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self.received = 0  # bytes received so far: none means a reused connection was found dead
        self.at_end = False  # the response's body has ended (set by the response)
        # While set (time.monotonic), every read ends by then: headers that trickle in, or an
        # endless run of "100 Continue", cannot outlast it one patient byte at a time.
        self.deadline = deadline

    @property
    def sock(self) -> socket.socket:
        return self._sock

    @property
    def held(self) -> int:
        """Bytes already received and not yet read (TLS records decrypted but unread included)."""
        pending = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (pending() if pending is not None else 0)

    @property
    def buffered(self) -> int:
        """`held`, or at least 1 once the body has ended: a read then returns at once.

        A caller that reads while this is non-zero and polls the socket only when it is zero
        never waits on a kept-alive connection whose server has nothing more to send.
        """
        return self.held + (1 if self.at_end else 0)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def fileno(self) -> int:
        return self._sock.fileno()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._buf = b""
        self._pos = 0
        self._file.close()

    def _take(self, n: int) -> bytes:
        end = self._pos + n if n >= 0 else len(self._buf)
        data = self._buf[self._pos : end]
        self._pos += len(data)
        if self._pos >= len(self._buf):
            self._buf = b""
            self._pos = 0
        return data

    def _fill(self) -> bool:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("the response took too long to start")
            timeout = self._sock.gettimeout()
            if timeout is None or timeout > remaining:
                self._sock.settimeout(remaining)
        data = self._sock.recv(_READ_SIZE)
        if not data:
            return False
        self.received += len(data)
        self._buf = self._buf[self._pos :] + data if self._pos < len(self._buf) else data
        self._pos = 0
        return True

    def read1(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        if self._pos >= len(self._buf) and not self._fill():
            return b""
        return self._take(n)

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            parts = [self._take(-1)]
            while self._fill():
                parts.append(self._take(-1))
            return b"".join(parts)
        while len(self._buf) - self._pos < n and self._fill():
            pass
        return self._take(n)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, limit: int = -1) -> bytes:
        start = self._pos
        while True:
            end = self._buf.find(b"\n", start)
            if end >= 0:
                return self._take(min(end + 1 - self._pos, limit) if limit >= 0 else end + 1 - self._pos)
            if 0 <= limit <= len(self._buf) - self._pos:
                return self._take(limit)
            start = len(self._buf) - self._pos
            if not self._fill():
                return self._take(-1)

    def peek(self, n: int = 0) -> bytes:
        if self._pos >= len(self._buf):
            self._fill()
        return self._buf[self._pos :]


class _ChunkedDecoder:
    """HTTP/1.1 chunked transfer coding, decoded from whatever bytes each read brings.

    http.client decodes chunks with blocking reads of its own (a chunk's trailing CRLF, the
    next size line), which would stall a relay waiting on the socket; this never blocks.
    """

    _SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)
    _MAX_LINE = 4096

    def __init__(self) -> None:
        self._buf = b""
        self._state = self._SIZE
        self._left = 0
        self.extra = 0  # bytes after the last chunk: a server that sent them cannot be trusted again

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    def feed(self, data: bytes) -> bytes:
        """The body bytes that `data` completes; raises ValueError on broken framing."""
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end and self._state != self._DONE:
            state = self._state
            if state == self._DATA:
                take = min(self._left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = self._DATA_END
            elif state == self._DATA_END:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ValueError("a chunk does not end with CRLF")
                pos += 2
                self._state = self._SIZE
            else:  # a size line or a trailer line
                newline = buf.find(b"\n", pos)
                if newline < 0:
                    if end - pos > self._MAX_LINE:
                        raise ValueError("a chunk size line is too long")
                    break
                line = buf[pos:newline].rstrip(b"\r")
                pos = newline + 1
                if state == self._SIZE:
                    size_text = line.split(b";", 1)[0].strip()
                    if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
                        raise ValueError("a chunk size is not hexadecimal")
                    self._left = int(size_text, 16)
                    self._state = self._DATA if self._left else self._TRAILER
                elif not line:
                    self._state = self._DONE
        if self._state == self._DONE:
            self.extra += end - pos
            self._buf = b""
        else:
            self._buf = buf[pos:]
        return b"".join(out) if len(out) != 1 else out[0]


class _LentSocket:
    """The socket under a response, as its reader sees it: to poll it, time it, or shut it down.

    Once the response is closed its connection may already serve another request from the
    pool, so a late `shutdown()` (an abort from another thread) or `settimeout()` does nothing.
    """

    def __init__(self, response: Any, sock: socket.socket) -> None:
        self._response = response
        self._sock = sock

    def _lent(self) -> bool:
        return getattr(self._response, "fp", None) is not None

    def fileno(self) -> int:
        return self._sock.fileno()

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def settimeout(self, timeout: float | None) -> None:
        if self._lent():
            self._sock.settimeout(timeout)

    def shutdown(self, how: int) -> None:
        if self._lent():
            self._sock.shutdown(how)

    def pending(self) -> int:
        pending = getattr(self._sock, "pending", None)
        return pending() if pending is not None and self._lent() else 0


class _Body:
    """The transport's front door: how everything above this section reads a response's body.

    Chosen once per response. The pool's own responses (`_StreamingResponse`) are read one socket
    read at a time through their framing, and can be waited on (`fileno`, `buffered`), timed
    (`settimeout`), made non-blocking and aborted from any thread. Any other response (a test
    double, a foreign urllib handler's) is read with read1()/read(), and has no socket.
    """

    def __init__(self, response: Any) -> None:
        self.response = response
        fp = getattr(response, "fp", None)
        self._reader: _SocketReader | None = fp if isinstance(fp, _SocketReader) else None
        self.socket = _LentSocket(response, fp.sock) if isinstance(fp, _SocketReader) else None
        self._eof = False

    @property
    def eof(self) -> bool:
        """True once the body has ended (its framing says so, or the connection closed)."""
        return self.response.body_eof if self._reader is not None else self._eof

    def read(self) -> bytes:
        """Body bytes from one read (b"" when only framing came: check `eof`)."""
        if self._reader is not None:
            return self.response.read_some()
        read1 = getattr(self.response, "read1", None)
        data = read1(_READ_SIZE) if read1 is not None else self.response.read(_READ_SIZE)
        self._eof = not data
        return data

    @property
    def buffered(self) -> int:
        """Bytes received and held, not yet read: read them before waiting on the socket."""
        return self._reader.buffered if self._reader is not None else 0

    @property
    def pollable(self) -> bool:
        """Whether there is a socket to wait on, time and abort (the pool's responses)."""
        return self.socket is not None

    def begin(self, read_timeout: float | None, *, timed: bool = True) -> None:
        """The status and headers are in: the headers' deadline is over, and (when `timed`) the
        body's own idle timeout, `read_timeout`, applies from here."""
        if self._reader is not None and self.socket is not None:
            if timed:
                self.socket.settimeout(read_timeout)
            self._reader.deadline = None

    def settimeout(self, timeout: float | None) -> None:
        if self.socket is not None:
            self.socket.settimeout(timeout)

    def fileno(self) -> int:
        if self.socket is None:
            raise GlooError("this stream has no socket to wait on")
        return self.socket.fileno()

    def abort(self) -> None:
        """Cut the connection from any thread: a read blocked in another thread returns at once."""
        if self.socket is not None:
            try:
                self.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


_DRAIN_BYTES = 64 * 1024  # at close, read at most this much already-arrived body to find its end
_DRAIN_WAIT = 0.05  # ...waiting at most this long for the rest of a TLS record that began to arrive


def _readable(sock: socket.socket, wait: float = 0.0) -> bool:
    """Whether a recv would return at once (data, or the end of the connection), waiting up to `wait` s."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(wait * 1000))
        return bool(select.select([sock], [], [], wait)[0])
    except (OSError, ValueError):
        return True  # a broken socket: let the caller find out


def _quiet(sock: socket.socket) -> bool:
    """Whether an idle connection is still usable: nothing to read, or only TLS records that carry no data.

    A TLS 1.3 server sends its session tickets after the handshake, and they can arrive after the
    answer did: they make the socket readable, yet the connection is fine. Reading them (without
    blocking) tells them apart from a close or stray bytes.
    """
    if not _readable(sock):
        return True
    if ssl is None or not isinstance(sock, ssl.SSLSocket):
        return False  # readable while idle: closed by the server, or bytes no request asked for
    timeout = sock.gettimeout()
    try:
        sock.settimeout(0.0)
        for _ in range(4):
            try:
                sock.recv(1)
            except ssl.SSLWantReadError:
                if not _readable(sock):
                    return True  # only TLS housekeeping was waiting
                continue
            return False  # data, or the end of the connection
        return False
    except (OSError, ValueError):
        return False
    finally:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass


class _StreamingResponse(http.client.HTTPResponse):
    """An http.client response read through a _SocketReader, which frames its own body.

    Reading the body here (not through http.client's blocking chunk reads) lets a relay poll
    the socket, and tells `close()` whether the body ended cleanly: if it did, and the server
    keeps the connection alive, the connection goes back to its pool; otherwise it is closed.
    """

    def __init__(self, sock: socket.socket, *args: Any, deadline: float | None = None, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        # Nothing has been read yet, so nothing is lost by swapping the reader.
        self.fp = _SocketReader(self.fp, sock, deadline=deadline)  # type: ignore[assignment]
        self._chunks: _ChunkedDecoder | None = None
        self._left: int | None = None
        self._pending = b""  # decoded body bytes a sized read has not returned yet
        self.body_eof = False
        self._release: Callable[[bool], None] | None = None  # set by the pool: called once at close
        self._drain_wait = _DRAIN_WAIT  # how long close() may wait for the body's end in flight

    def begin(self) -> None:
        super().begin()
        # http.client skips only "100 Continue"; 102 Processing and 103 Early Hints are interim too.
        while 100 <= self.status < 200 and self.status != 101:
            self.headers = self.msg = None  # type: ignore[assignment]  # begin() reads a new status only then
            super().begin()
        self._chunks = _ChunkedDecoder() if self.chunked else None
        self._left = None if self.chunked else self.length
        self.body_eof = self._left == 0
        if isinstance(self.fp, _SocketReader):
            self.fp.at_end = self.body_eof

    # -- the body, framed ------------------------------------------------

    def read_some(self) -> bytes:
        """Body bytes from at most one socket read (b"" when only framing came; check `body_eof`)."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        reader = self.fp
        if self.body_eof or not isinstance(reader, _SocketReader):
            return b""
        data = self._read_framed(reader)
        if self.body_eof:
            reader.at_end = True
        return data

    def _read_framed(self, reader: _SocketReader) -> bytes:
        raw = reader.read1(_READ_SIZE)
        if not raw:
            self.body_eof = True
            if (self._chunks is not None and not self._chunks.done) or self._left:
                raise http.client.IncompleteRead(b"")
            return b""
        if self._chunks is not None:
            data = self._chunks.feed(raw)
            self.body_eof = self._chunks.done
            return data
        if self._left is not None:
            if len(raw) > self._left:
                # Bytes after the body (even a stray CRLF): the body inside its framing is whole and kept;
                # the connection cannot be trusted for another request, so it is not reused.
                log.info("the server sent %d bytes after its Content-Length; the connection is not reused",
                         len(raw) - self._left)
                raw, self._left, self.will_close = raw[: self._left], 0, True
                self.body_eof = True
                return raw
            self._left -= len(raw)
            self.body_eof = self._left == 0
        return raw

    def read(self, amt: int | None = None) -> bytes:
        if amt is None or amt < 0:
            parts = [self.read_some()]
            while not self.body_eof:
                parts.append(self.read_some())
            return b"".join(parts)
        if amt == 0:
            return b""
        parts, size = [], 0
        while size < amt and (self._pending or not self.body_eof):
            data = self.read_some()
            parts.append(data)
            size += len(data)
        data = b"".join(parts)
        self._pending = data[amt:]
        return data[:amt]

    def read1(self, n: int = -1) -> bytes:
        data = self.read_some()
        while not data and not self.body_eof:
            data = self.read_some()
        if 0 <= n < len(data):
            self._pending = data[n:]
            data = data[:n]
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, limit: int | None = -1) -> bytes:
        limit = -1 if limit is None else limit
        line = b""
        while limit < 0 or len(line) < limit:
            if not self._pending:
                self._pending = self.read1()
                if not self._pending:
                    break
            end = self._pending.find(b"\n")
            cut = end + 1 if end >= 0 else len(self._pending)
            if limit >= 0:
                cut = min(cut, limit - len(line))
            line += self._pending[:cut]
            self._pending = self._pending[cut:]
            if line.endswith(b"\n"):
                break
        return line

    def peek(self, n: int = 0) -> bytes:
        if not self._pending and not self.body_eof:
            self._pending = self.read1()
        return self._pending

    def setblocking(self, blocking: bool) -> None:
        """Non-blocking reads for an event loop: a read with nothing to give raises BlockingIOError
        (or ssl.SSLWantReadError), and closing never waits for the body's end."""
        self._drain_wait = _DRAIN_WAIT if blocking else 0.0
        reader = self.fp
        if isinstance(reader, _SocketReader):
            reader.sock.settimeout(None if blocking else 0.0)

    # -- the end: back to the pool, or closed ------------------------------

    def _ended_cleanly(self) -> bool:
        """Whether the body ended with nothing after it, reading only what already arrived to know."""
        reader = self.fp
        if not isinstance(reader, _SocketReader) or self.will_close or self._pending:
            return False
        try:
            budget = _DRAIN_BYTES
            wait = self._drain_wait
            waited_until = time.monotonic() + wait
            while not self.body_eof and budget > 0:
                # A stream stopped at its last event ([DONE]) usually has the body's end in flight:
                # wait a moment for it rather than pay a new connection (and TLS handshake) later.
                if not reader.held and not _readable(reader.sock, max(0.0, waited_until - time.monotonic())):
                    return False
                if wait:
                    reader.sock.settimeout(wait)
                budget -= len(self.read_some())
            return (self.body_eof and reader.held == 0 and not (self._chunks and self._chunks.extra)
                    and _quiet(reader.sock))
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def abandon(self) -> None:
        """Close without waiting for the body's end: the reader stopped before the answer did."""
        self._drain_wait = 0.0
        self.close()

    def close(self) -> None:
        release, self._release = self._release, None
        clean = release is not None and self._ended_cleanly()
        super().close()
        if release is not None:
            release(clean)


class _PooledHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection that can be lent out again; its responses are _StreamingResponses."""

    headers_deadline: float | None = None  # when the next response must have begun (time.monotonic)
    reader: _SocketReader | None = None  # the reader of the last response begun on this connection

    def response_class(self, sock: socket.socket, *args: Any, **kwargs: Any) -> _StreamingResponse:  # type: ignore[override]
        # http.client builds each response with self.response_class(...): as a method it can
        # hand the response its deadline, which the class alone could not know.
        response = _StreamingResponse(sock, *args, deadline=self.headers_deadline, **kwargs)
        self.reader = response.fp  # type: ignore[assignment]
        return response


class _PooledHTTPSConnection(_PooledHTTPConnection, http.client.HTTPSConnection):
    """The same over TLS, with the client's one TLS context."""


_PoolKey = tuple[str, str, str]  # scheme, host:port, proxy ("" when none)


class _ConnectionPool:
    """Idle keep-alive connections, at most `size` per scheme+host+port+proxy, each kept `idle_timeout` s.

    Thread-safe: a relay's threads all borrow from one pool. A connection is lent to one
    request at a time; a request that finds none idle opens a new one (never waits).
    """

    def __init__(self, size: int = 16, idle_timeout: float = 30.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = max(0, int(size))
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._idle: dict[_PoolKey, list[tuple[float, _PooledHTTPConnection]]] = {}
        self._lock = threading.Lock()
        self.opened = 0  # connections opened, for benchmarks and tests
        self.reused = 0  # requests sent on a connection taken from the pool
        weakref.finalize(self, _close_idle, self._idle)  # a client dropped closes its idle sockets

    def take(self, key: _PoolKey) -> _PooledHTTPConnection | None:
        """An idle connection to `key` that still looks alive, or None."""
        while True:
            now = self._clock()
            expired: list[_PooledHTTPConnection] = []
            with self._lock:
                idle = self._idle.get(key)
                found = None
                if idle:
                    released, found = idle.pop()  # the most recently used: the others can expire
                    if now - released > self.idle_timeout:
                        expired = [found] + [conn for _, conn in idle]
                        idle.clear()
                        found = None
                    if not idle:
                        del self._idle[key]
            for conn in expired:
                conn.close()
            if found is None:
                return None
            sock = found.sock
            if sock is not None and _quiet(sock):  # readable while idle: closed by the server
                with self._lock:
                    self.reused += 1
                return found
            found.close()

    def put(self, key: _PoolKey, conn: _PooledHTTPConnection) -> None:
        """Keep `conn` for the next request to `key` (or close it when the pool is full)."""
        now = self._clock()
        drop: list[_PooledHTTPConnection] = []
        with self._lock:
            idle = self._idle.setdefault(key, [])
            while idle and now - idle[0][0] > self.idle_timeout:
                drop.append(idle.pop(0)[1])
            if conn.sock is None or len(idle) >= self.size:
                drop.append(conn)
            else:
                idle.append((now, conn))
            if not idle:
                del self._idle[key]
        for old in drop:
            old.close()

    def note_opened(self) -> None:
        with self._lock:
            self.opened += 1

    def idle_count(self, key: _PoolKey | None = None) -> int:
        """Idle connections held (for `key`, or in all)."""
        with self._lock:
            if key is not None:
                return len(self._idle.get(key, ()))
            return sum(len(idle) for idle in self._idle.values())

    def clear(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle = [conn for conns in self._idle.values() for _, conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()


def _close_idle(idle: dict[_PoolKey, list[tuple[float, _PooledHTTPConnection]]]) -> None:
    for conns in list(idle.values()):
        for _, conn in conns:
            conn.close()
    idle.clear()


class _Request(urllib.request.Request):
    """A urllib request that also says how long to wait for its answer once it is sent."""

    def __init__(self, url: str, *, read_timeout: float | None = None,
                 response_deadline: float | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.read_timeout = read_timeout  # each wait for the status and headers (None: the connect timeout)
        self.response_deadline = response_deadline  # time.monotonic() by which the headers must be in


class _ResponseTimeout(socket.timeout):
    """The request was sent whole, then no answer came in time: sending it again could run it twice."""


class _StaleConnection(Exception):
    """A reused connection was found closed while the request was being written: it never arrived whole."""


class _SentThenLost(ConnectionError):
    """The request was sent whole, then the connection was lost before an answer: it may have been read."""


_SSL_CONTEXTS: dict[tuple[str | None, str | None], Any] = {}
_SSL_CONTEXTS_LOCK = threading.Lock()


def _default_ssl_context() -> Any:
    """The process's verifying TLS context, honouring SSL_CERT_FILE and SSL_CERT_DIR.

    Built once per process (per CA setting): loading the CA store costs tens of milliseconds
    of CPU, and every client and relay thread can share one context.
    """
    if ssl is None:
        raise ConfigurationError("this Python has no ssl module: https URLs cannot be used")
    key = (os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None)
    with _SSL_CONTEXTS_LOCK:
        context = _SSL_CONTEXTS.get(key)
        if context is None:
            context = _SSL_CONTEXTS[key] = ssl.create_default_context(cafile=key[0], capath=key[1])
        return context


class _PooledHandler(urllib.request.AbstractHTTPHandler):
    """urllib.request's http and https handler, over pooled keep-alive connections.

    Proxies come from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) as urllib's own
    ProxyHandler reads them; https goes through a CONNECT tunnel, pooled like any connection.
    """

    def __init__(self, pool: _ConnectionPool, *, ssl_context: Any = None,
                 proxies: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.pool = pool
        self._ssl_context = ssl_context
        self._ssl_lock = threading.Lock()
        self._proxies: dict[str, tuple[str, dict[str, str]]] = {}
        for scheme, proxy in (urllib.request.getproxies() if proxies is None else proxies).items():
            if scheme in ("http", "https") and proxy:
                proxy = proxy if "://" in proxy else "http://" + proxy
                parts = urllib.parse.urlsplit(proxy)
                if parts.scheme == "https" and parts.username is not None:
                    # The proxy is reached over plain TCP (its CONNECT included): its password would go in clear.
                    raise ConfigurationError(
                        f"{scheme.upper()}_PROXY is an https:// proxy with a user and password, and this client "
                        "speaks to proxies in plain TCP, which would send the password in clear: use the proxy's "
                        "http:// address on a network you trust, or a proxy that needs no password")
                self._proxies[scheme] = (proxy, _proxy_auth(parts))

    http_request = urllib.request.AbstractHTTPHandler.do_request_
    https_request = urllib.request.AbstractHTTPHandler.do_request_

    def http_open(self, req: urllib.request.Request) -> _StreamingResponse:
        return self._open(req)

    def https_open(self, req: urllib.request.Request) -> _StreamingResponse:
        return self._open(req)

    @property
    def ssl_context(self) -> Any:
        """The one TLS context of this handler, built on first use (building one loads the CA store)."""
        if self._ssl_context is None:
            with self._ssl_lock:
                if self._ssl_context is None:
                    self._ssl_context = _default_ssl_context()
        return self._ssl_context

    def _proxy(self, scheme: str, host: str) -> tuple[str, dict[str, str]]:
        proxy = self._proxies.get(scheme)
        if proxy is None or urllib.request.proxy_bypass(host):
            return "", {}
        return proxy

    def _connect(self, scheme: str, host: str, proxy: str, proxy_headers: dict[str, str],
                 timeout: Any) -> _PooledHTTPConnection:
        conn: _PooledHTTPConnection
        if proxy:
            parts = urllib.parse.urlsplit(proxy)
            proxy_host = parts.hostname or ""
            proxy_port = parts.port or (443 if parts.scheme == "https" else 80)
            if scheme == "https":
                conn = _PooledHTTPSConnection(proxy_host, proxy_port, timeout=timeout, context=self.ssl_context)
                conn.set_tunnel(host, headers=proxy_headers)
            else:
                conn = _PooledHTTPConnection(proxy_host, proxy_port, timeout=timeout)
        elif scheme == "https":
            conn = _PooledHTTPSConnection(host, timeout=timeout, context=self.ssl_context)
        else:
            conn = _PooledHTTPConnection(host, timeout=timeout)
        self.pool.note_opened()
        return conn

    def preconnect(self, url: str, timeout: float) -> bool:
        """Open one connection to `url`'s server and park it in the pool (unless one is idle there).

        True when a connection was opened. A relay does this at startup, so its first user does not
        pay the TCP and TLS handshakes.
        """
        req = urllib.request.Request(url)
        scheme, host = req.type, req.host
        proxy, proxy_headers = self._proxy(scheme, host)
        key: _PoolKey = (scheme, host, proxy)
        if not self.pool.size or self.pool.idle_count(key):
            return False
        conn = self._connect(scheme, host, proxy, proxy_headers, timeout)
        try:
            conn.connect()
        except OSError:
            conn.close()
            raise
        self.pool.put(key, conn)
        return True

    def _open(self, req: urllib.request.Request) -> _StreamingResponse:
        scheme, host = req.type, req.host
        if not host:
            raise urllib.error.URLError("no host given")
        proxy, proxy_headers = self._proxy(scheme, host)
        key: _PoolKey = (scheme, host, proxy)
        headers = dict(req.header_items())
        selector = req.selector
        if proxy and scheme == "http":
            selector = req.full_url  # a plain-http proxy takes the whole URL
            headers.update(proxy_headers)
        replayable = req.data is None or isinstance(req.data, (bytes, bytearray))
        conn = self.pool.take(key) if self.pool.size else None
        if conn is not None:
            try:
                return self._exchange(conn, req, selector, headers, key, reused=True)
            except _StaleConnection:
                if not replayable:
                    raise http.client.RemoteDisconnected("a reused connection closed before answering") from None
                log.info("a pooled connection to %s was closed by the server; sending again on a new one", host)
        conn = self._connect(scheme, host, proxy, proxy_headers, req.timeout)
        try:
            return self._exchange(conn, req, selector, headers, key, reused=False)
        except _StaleConnection:  # cannot happen on a new connection; kept for type checkers
            raise http.client.RemoteDisconnected("the server closed the connection before answering") from None

    def _exchange(self, conn: _PooledHTTPConnection, req: urllib.request.Request, selector: str,
                  headers: dict[str, str], key: _PoolKey, *, reused: bool) -> _StreamingResponse:
        conn.headers_deadline = getattr(req, "response_deadline", None)
        conn.reader = None
        try:
            if conn.sock is not None:
                conn.sock.settimeout(req.timeout)  # a borrowed socket has the last stream's timeout
            conn.request(req.get_method(), selector, req.data, headers)
        except OSError as exc:
            conn.close()
            if reused and not isinstance(exc, socket.timeout):
                raise _StaleConnection() from None
            raise urllib.error.URLError(exc) from None
        # Sent: from here every wait is for the server's answer, and uses the read timeout.
        read_timeout = getattr(req, "read_timeout", None)
        if conn.sock is not None and read_timeout is not None:
            conn.sock.settimeout(read_timeout)
        try:
            response: _StreamingResponse = conn.getresponse()  # type: ignore[assignment]
        except socket.timeout:
            conn.close()
            raise _ResponseTimeout("timed out waiting for the response") from None
        except (ConnectionError, http.client.BadStatusLine) as exc:
            # Sent whole, then closed or reset: the server may have read it (and be generating it), so it
            # is never sent again, on this connection or another (a stale idle connection is found before
            # writing, by the pool).
            conn.close()
            raise _SentThenLost(_describe_os_error(exc) or "the connection closed before an answer") from None
        except BaseException:
            conn.close()
            raise
        response.url = req.full_url  # what urllib's own handler sets; HTTPError reads msg as the reason
        response.msg = response.reason  # type: ignore[assignment]
        if not response.will_close and self.pool.size:
            pool = self.pool

            def release(clean: bool) -> None:
                if clean:
                    pool.put(key, conn)
                else:
                    conn.close()

            response._release = release
        elif not response.will_close:
            response._release = lambda clean: conn.close()
        return response


def _proxy_auth(parts: urllib.parse.SplitResult) -> dict[str, str]:
    if parts.username is None:
        return {}
    user_pass = "{}:{}".format(urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
    _register_secret(user_pass)
    return {"Proxy-Authorization": "Basic " + base64.b64encode(user_pass.encode("utf-8")).decode("ascii")}


def _build_opener(*, pool: _ConnectionPool | None = None, ssl_context: Any = None,
                  handler: _PooledHandler | None = None) -> urllib.request.OpenerDirector:
    """An opener with the pooled handler and no redirect handler: a 3xx is an HTTPError, never followed.

    Following a redirect would send the bearer token or the client secret to wherever the
    Location points, over plain http even; callers turn a 3xx into a typed error instead.
    """
    opener = urllib.request.OpenerDirector()
    if handler is None:
        handler = _PooledHandler(pool if pool is not None else _ConnectionPool(), ssl_context=ssl_context)
    for each in (handler, urllib.request.UnknownHandler(), urllib.request.HTTPDefaultErrorHandler(),
                 urllib.request.HTTPErrorProcessor()):
        opener.add_handler(each)
    return opener


# ---------------------------------------------------------------------------
# Transport checks: credentials and URLs refused or redacted, headers in any case, statuses to errors
# ---------------------------------------------------------------------------


def _has_control(value: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in value)


def _credential(value: str | None, name: str, error: type = ConfigurationError) -> str | None:
    """`value` without surrounding whitespace (files end in a newline); refused if it holds control characters.

    The message names the variable, never the value: a secret pasted with a CR in the middle
    would otherwise split a header, and echoing it would print it.
    """
    if value is None:
        return None
    value = value.strip()
    if _has_control(value):
        raise error(
            f"{name} contains a control character (a CR, LF, tab or similar): set it again without one"
        )
    if not value.isascii():  # it goes into an HTTP header, which carries only such characters
        raise error(f"{name} contains a character that is not ASCII (a curly quote or a stray character "
                    "copied with it?): set it again as issued")
    return value


def _redact_url(url: str) -> str:
    """`url` with any user:password@ replaced, and registered secrets scrubbed."""
    try:
        parts = urllib.parse.urlsplit(url)
        if "@" in parts.netloc:
            url = urllib.parse.urlunsplit(parts._replace(netloc="[redacted]@" + parts.netloc.rpartition("@")[2]))
    except ValueError:
        return "[a URL that does not parse]"
    return redact(url)


def _check_url(url: str, name: str) -> str:
    """An http(s) URL without credentials in it, else a ConfigurationError naming `name`."""
    url = url.strip()
    if _has_control(url):
        raise ConfigurationError(f"{name} contains a control character: set it again without one")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # noqa: F841  (a bad port raises here, not on the first request)
    except ValueError:
        raise ConfigurationError(f"{name} is not a valid URL: {_redact_url(url)}") from None
    if "@" in parts.netloc:
        raise ConfigurationError(
            f"{name} must not carry a user name or password (user:password@): "
            "give the credentials as GLOO_CLIENT_ID / GLOO_CLIENT_SECRET or GLOO_API_KEY"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"not an http(s) URL: {_redact_url(url)!r} (check {name})")
    return url


def _read_error_body(error: urllib.error.HTTPError) -> str:
    try:
        data = error.read(_ERROR_BODY_LIMIT)
    except (OSError, http.client.HTTPException):
        data = b""
    finally:
        error.close()
    return data.decode("utf-8", "replace")


_MAX_RETRY_AFTER = 24 * 3600.0  # a longer ask (inf, 1e400, a date in 3000) is read as this


def _header(headers: Any, name: str) -> str:
    """The value of header `name` in any case, from a dict or an http.client message ("" when absent)."""
    if headers is None:
        return ""
    if not isinstance(headers, dict) or isinstance(headers, _Headers):
        value = headers.get(name)  # http.client messages and _Headers ignore case themselves
    else:
        value = headers.get(name)
        if value is None:
            lowered = name.lower()
            value = next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == lowered), None)
    return str(value).strip() if value is not None else ""


def _seconds(value: float) -> float | None:
    if math.isnan(value):
        return None
    return min(max(0.0, value), _MAX_RETRY_AFTER)  # inf and 1e400 (which float() reads as inf) capped


def _parse_retry_after(headers: Mapping[str, str], *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or HTTP date), else `X-RateLimit-Reset`.

    Header names in any case; the answer is capped at a day, never an OverflowError.
    """
    value = _header(headers, "Retry-After")
    if value:
        try:
            return _seconds(float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                wait = when.timestamp() - now() if when is not None and when.tzinfo is not None else None
            except (TypeError, ValueError, IndexError, OverflowError, OSError):
                wait = None
            if wait is not None:
                return _seconds(wait)
    value = _header(headers, "X-RateLimit-Reset")
    if value:
        try:
            reset = float(value)
        except ValueError:
            return None
        # Either seconds from now or a Unix time; a Unix time is far larger than any sane wait.
        if 1_000_000_000 < reset < 1e12:
            return _seconds(reset - now())
        return _seconds(reset)
    return None


def _status_error(status: int, body: str = "", headers: Mapping[str, str] | None = None) -> APIStatusError:
    headers = _Headers(headers or {})
    if 300 <= status < 400:
        location = _header(headers, "Location")
        where = f" to {_redact_url(location)[:300]}" if location else ""
        return RedirectError(
            f"the completions endpoint redirected ({status}){where}; redirects are not followed, so the "
            "bearer token never travels elsewhere: set GLOO_API_URL to the final address",
            status=status, body=body, headers=headers, location=_redact_url(location) if location else None,
        )
    cls = _status_class(status, body)
    retry_after = _parse_retry_after(headers)
    message = _describe_status(status, redact(body))
    if cls is SpendLimitError and retry_after is not None:
        message += f" (it resets {_describe_reset(retry_after)})"
    return cls(message, status=status, body=body, headers=headers, retry_after=retry_after)


def _describe_reset(seconds: float, *, now: Callable[[], float] = time.time) -> str:
    """When a wait of `seconds` ends, as a person reads it: "2026-12-14 00:00 UTC, in 5 days 3 h"."""
    at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now() + seconds))
    minutes = max(1, int(round(seconds / 60)))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} day{'s' if days != 1 else ''}"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if minutes and not days:
        parts.append(f"{minutes} min")
    return f"{at}, in {' '.join(parts)}"


class RedirectError(APIStatusError):
    """3xx: the endpoint answered a redirect, which is never followed (it would carry the credentials).

    `location` is where it pointed (credentials in it redacted); `status` the 3xx code.
    """

    def __init__(self, message: str, *, location: str | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.location = location


# ---------------------------------------------------------------------------
# OAuth tokens: client credentials, one fetch at a time, refreshed early with a grace
# ---------------------------------------------------------------------------


class TokenCache:
    """OAuth2 client-credentials tokens, fetched once and shared by every thread until near expiry.

    A token is refreshed 5 minutes before it expires, or halfway through a shorter life; if
    that early refresh fails, the cached token is used while it is valid and the refresh tried again.
    """

    refresh_retry_seconds = 30.0  # after a failed early refresh, try again this much later

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        token_url: str = DEFAULT_TOKEN_URL,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        opener: urllib.request.OpenerDirector | None = None,
    ) -> None:
        client_id = _credential(client_id, "GLOO_CLIENT_ID") or ""
        client_secret = _credential(client_secret, "GLOO_CLIENT_SECRET") or ""
        if not client_id or not client_secret:
            raise ConfigurationError(
                "missing Gloo credentials: set GLOO_CLIENT_ID and GLOO_CLIENT_SECRET in the environment or in .env"
            )
        self.token_url = _check_url(token_url, "GLOO_TOKEN_URL")
        # The secret and the tokens in use are scrubbed from messages; forgotten when this cache goes.
        self._live_secrets: list[str] = []
        self._remember(client_secret)
        weakref.finalize(self, _forget_secrets, self._live_secrets)
        self.client_id = client_id
        self._client_secret = client_secret
        self.timeout = timeout
        self._clock = clock
        self._opener = opener or _build_opener()
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._fetches_done = 0  # fetches finished (either way): a caller that saw fewer queued behind one
        self._last_failure: TokenError | None = None
        self.fetch_count = 0

    def __repr__(self) -> str:  # never show the secret or the token
        return f"TokenCache(client_id={self.client_id!r}, token_url={self.token_url!r})"

    def _remember(self, value: str) -> None:
        _register_secret(value)
        self._live_secrets.append(value)

    def get(self) -> str:
        """A valid access token, fetching a new one only when needed.

        One fetch at a time: callers that queued behind a fetch that failed get its error at
        once instead of each trying again, so N callers fail in one timeout, not N. A failed
        early refresh keeps the still-valid token (with a warning) and tries again later.
        """
        ticket = self._fetches_done  # read before waiting: a fetch that ends meanwhile answers this call too
        with self._lock:
            now = self._clock()
            token = self._token
            if token is not None and now < self._refresh_at:
                return token
            valid = token is not None and now < self._expires_at
            failure = self._last_failure
            if failure is not None and self._fetches_done != ticket:
                if valid:
                    assert token is not None
                    return token
                raise TokenError(str(failure), status=failure.status)
            try:
                self._fetch()
            except TokenError as exc:
                self._last_failure = exc
                self._fetches_done += 1
                if not valid:
                    raise
                assert token is not None
                left = self._expires_at - now
                self._refresh_at = now + min(self.refresh_retry_seconds, left / 2)
                log.warning("token refresh failed (%s); the current token stays in use (%.0fs left), "
                            "next try in %.0fs", exc, left, self._refresh_at - now)
                return token
            self._last_failure = None
            self._fetches_done += 1
            assert self._token is not None
            return self._token

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (only if it is still `token`, when given)."""
        with self._lock:
            if token is None or token == self._token:
                self._token = None

    @property
    def refresh_at(self) -> float:
        """When (on this cache's clock) the next `get()` fetches a new token; 0 when none is cached."""
        return self._refresh_at if self._token else 0.0

    @property
    def expires_at(self) -> float:
        """When the cached token expires, on the cache's clock (0 when none is cached)."""
        return self._expires_at if self._token else 0.0

    def _fetch(self) -> None:
        form = urllib.parse.urlencode(
            {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self._client_secret}
        ).encode("ascii")
        request = _Request(
            self.token_url,
            data=form,
            method="POST",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
                "User-Agent": _USER_AGENT,
            },
            read_timeout=self.timeout,
            response_deadline=time.monotonic() + 2 * self.timeout,
        )
        self.fetch_count += 1
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read(_ERROR_BODY_LIMIT + 1)
        except urllib.error.HTTPError as exc:
            location = _header(exc.headers, "Location") if 300 <= exc.code < 400 else ""
            body = _read_error_body(exc)
            if 300 <= exc.code < 400:
                where = f" to {_redact_url(location)[:300]}" if location else ""
                raise TokenError(
                    f"the token endpoint redirected ({exc.code}){where}; redirects are not followed, so the "
                    "client secret never travels elsewhere: set GLOO_TOKEN_URL to the final address",
                    status=exc.code,
                ) from None
            hint = " (check GLOO_CLIENT_ID and GLOO_CLIENT_SECRET)" if exc.code in (400, 401, 403) else ""
            raise TokenError(
                f"token request failed ({exc.code}){hint}: {redact(body)[:200]}", status=exc.code
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise TokenError(f"token endpoint unreachable at {self.token_url}: {_describe_os_error(exc)}") from None
        try:
            payload = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise TokenError("token endpoint answered something that is not JSON") from None
        token = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not token.strip():
            raise TokenError("token endpoint answered without an access_token")
        token = _credential(token, "the access_token the token endpoint issued", TokenError) or ""
        lifetime = payload.get("expires_in", 3600)
        try:
            lifetime = float(lifetime)
        except (TypeError, ValueError, OverflowError):
            lifetime = 3600.0
        if not math.isfinite(lifetime) or lifetime <= 0:
            lifetime = 3600.0  # Gloo's documented lifetime; a 401 forces a refresh anyway
        lifetime = min(lifetime, 366 * 86400.0)
        now = self._clock()
        if token not in self._live_secrets:
            self._remember(token)
            # Kept: the secret, the token before (a stream begun with it may still run), this one.
            while len(self._live_secrets) > 3:
                _forget_secret(self._live_secrets.pop(1))
        self._token = token
        self._expires_at = now + lifetime
        self._refresh_at = now + lifetime - min(300.0, lifetime / 2)


# ---------------------------------------------------------------------------
# Client and streams: the completions POST, its retries, and the stream it opens
# ---------------------------------------------------------------------------


def _encode_payload(payload: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        pass  # a lone surrogate: it can travel only as a \u escape
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigurationError(f"the request cannot be sent as JSON ({exc.__class__.__name__})") from None
    try:
        return json.dumps(payload).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigurationError(f"the request cannot be sent as JSON ({exc.__class__.__name__})") from None


Messages = Union[str, Sequence[Mapping[str, Any]]]
ResponseInput = Union[str, Sequence[Mapping[str, Any]]]

_GROUNDED_FIELDS = ("rag_publisher", "sources_limit")
_ROUTING_FIELDS = ("auto_routing", "model", "model_family")  # exactly one of them picks the model


def is_grounded(payload: Mapping[str, Any]) -> bool:
    """True when a request body asks for a grounded answer (`rag_publisher` or `sources_limit`)."""
    return any(payload.get(key) is not None for key in _GROUNDED_FIELDS)


def _endpoint_name(value: str | None) -> str:
    name = (value or "completions").strip().lower()
    name = {"": "completions", "default": "completions", "standard": "completions", "chat": "completions"}.get(
        name, name)
    if name not in ENDPOINTS:
        raise ConfigurationError(f"unknown endpoint {value!r}: use 'completions' or 'guarded' (check GLOO_ENDPOINT)")
    return name


def _endpoint_url(url: str, endpoint: str) -> str:
    """`url` turned to the guarded endpoint when asked (Gloo's path shape only; other URLs are kept)."""
    if endpoint != "guarded":
        return url
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith("/ai/v2/chat/completions") and "/guarded/" not in path:
        path = path[: -len("/ai/v2/chat/completions")] + "/ai/v2/guarded/chat/completions"
        return urllib.parse.urlunsplit(parts._replace(path=path))
    return url


def _responses_url(api_url: str) -> str:
    """Where the Responses API is, beside a completions URL: Gloo's `/ai/v1/responses`, or
    `<base>/responses` beside an OpenAI-style `<base>/chat/completions`."""
    parts = urllib.parse.urlsplit(api_url)
    path = parts.path.rstrip("/")
    for gloo in ("/ai/v2/guarded/chat/completions", "/ai/v2/chat/completions"):
        if path.endswith(gloo):
            return urllib.parse.urlunsplit(parts._replace(path=path[: -len(gloo)] + "/ai/v1/responses"))
    if path.endswith("/chat/completions"):
        return urllib.parse.urlunsplit(parts._replace(path=path[: -len("/chat/completions")] + "/responses"))
    return urllib.parse.urlunsplit(parts._replace(path="/ai/v1/responses", query="", fragment=""))


def _models_url(api_url: str) -> str:
    """Where the model catalog is: Gloo's public `/platform/v2/models` on a Gloo-shaped API URL's host,
    or `<base>/models` beside an OpenAI-style `<base>/chat/completions`."""
    parts = urllib.parse.urlsplit(api_url)
    path = parts.path.rstrip("/")
    if "/ai/v2/" not in path + "/" and path.endswith("/chat/completions"):
        return urllib.parse.urlunsplit(parts._replace(path=path[: -len("/chat/completions")] + "/models"))
    return urllib.parse.urlunsplit(parts._replace(path="/platform/v2/models", query="", fragment=""))


def _grounded_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/grounded"):
        path += "/grounded"
    return urllib.parse.urlunsplit(parts._replace(path=path))


def _as_messages(message: Messages, system: str | None = None) -> list[dict]:
    if isinstance(message, str):
        messages: list[dict] = [{"role": "user", "content": message}]
    elif isinstance(message, Sequence) and message and all(isinstance(m, Mapping) for m in message):
        messages = [dict(m) for m in message if isinstance(m, Mapping)]  # (the filter is for the type checker)
    else:
        raise ConfigurationError("message must be a string or a non-empty list of chat messages")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return messages


class GlooClient:
    """A configured connection to the completions API.

    Credentials come from the arguments, else GLOO_CLIENT_ID / GLOO_CLIENT_SECRET (OAuth), or
    GLOO_API_KEY (a Gloo Studio API key, or any OpenAI-compatible server's key); URLs from
    GLOO_TOKEN_URL / GLOO_API_URL; `endpoint="guarded"` (or GLOO_ENDPOINT=guarded) picks Gloo's
    guarded completions. Grounded requests (`publisher=`, `sources_limit=`) go to `<api_url>/grounded`.
    Safe to share between threads.
    """

    def __init__(
        self,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        api_key: str | None = None,
        token_url: str | None = None,
        api_url: str | None = None,
        endpoint: str | None = None,
        responses_url: str | None = None,
        models_url: str | None = None,
        models_ttl: float = 3600.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        deadline: float | None = None,
        max_retries: int = 2,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_wait: float = 30.0,
        max_event_bytes: int | None = DEFAULT_MAX_EVENT_BYTES,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        token_cache: TokenCache | None = None,
        retry_rate_limited: bool = True,
        retry_timeouts: bool = False,
        ssl_context: Any = None,
        pool_size: int = 16,
        pool_idle_timeout: float = 30.0,
    ) -> None:
        self.endpoint = _endpoint_name(_setting(endpoint, "GLOO_ENDPOINT", "completions"))
        self.api_url = _check_url(
            _endpoint_url(_setting(api_url, "GLOO_API_URL", DEFAULT_API_URL) or DEFAULT_API_URL, self.endpoint),
            "GLOO_API_URL")
        self.token_url = _check_url(_setting(token_url, "GLOO_TOKEN_URL", DEFAULT_TOKEN_URL) or DEFAULT_TOKEN_URL,
                                    "GLOO_TOKEN_URL")
        self.responses_url = _check_url(_setting(responses_url, "GLOO_RESPONSES_URL")
                                        or _responses_url(self.api_url), "GLOO_RESPONSES_URL")
        self.models_url = _check_url(_setting(models_url, "GLOO_MODELS_URL") or _models_url(self.api_url),
                                     "GLOO_MODELS_URL")
        self.models_ttl = models_ttl
        self._catalog: tuple[float, tuple[ModelInfo, ...]] | None = None
        self._catalog_lock = threading.Lock()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.max_retries = max(0, int(max_retries))
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_wait = max_retry_wait
        self.max_event_bytes = max_event_bytes
        self.retry_rate_limited = retry_rate_limited  # False: a 429 is raised at once (a relay passes it on)
        self.retry_timeouts = retry_timeouts  # True: a request sent whole, then unanswered in time, is sent again
        self._sleep = sleep
        self._clock = clock
        # One pool and one TLS context for every stream and token request of this client.
        self.pool = _ConnectionPool(pool_size, pool_idle_timeout, clock=clock)
        self._handler = _PooledHandler(self.pool, ssl_context=ssl_context)
        self._opener = _build_opener(handler=self._handler)
        # Explicit OAuth credentials win over a GLOO_API_KEY left in the environment.
        explicit_oauth = client_id is not None and client_secret is not None
        self._api_key = _credential(api_key, "api_key") if api_key is not None else (
            None if explicit_oauth else _credential(_setting(None, "GLOO_API_KEY"), "GLOO_API_KEY"))
        if self._api_key:
            _register_secret(self._api_key)
            weakref.finalize(self, _forget_secret, self._api_key)
        if token_cache is not None:
            self.tokens: TokenCache | None = token_cache
        elif self._api_key:
            self.tokens = None
        else:
            cid = _credential(_setting(client_id, "GLOO_CLIENT_ID"), "GLOO_CLIENT_ID")
            secret = _credential(_setting(client_secret, "GLOO_CLIENT_SECRET"), "GLOO_CLIENT_SECRET")
            if not cid or not secret:
                raise ConfigurationError(
                    "missing Gloo credentials: set GLOO_CLIENT_ID and GLOO_CLIENT_SECRET, or GLOO_API_KEY "
                    "(a Gloo Studio API key), in the environment or in .env"
                )
            self.tokens = TokenCache(
                client_id=cid, client_secret=secret, token_url=self.token_url,
                timeout=connect_timeout, clock=clock, opener=self._opener,
            )

    def close(self) -> None:
        """Close the idle pooled connections (streams still open keep theirs until they end)."""
        self.pool.clear()

    def __enter__(self) -> GlooClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GlooClient(api_url={self.api_url!r}, auth={'api_key' if self.tokens is None else 'oauth'})"

    def warm_up(self) -> None:
        """Get ready for a first request: the TLS context, an OAuth token, one open connection to the API.

        Raises what a request would (TokenError, APIConnectionError, ConfigurationError).
        """
        try:
            if self.api_url.startswith("https:"):
                self._handler.ssl_context  # noqa: B018 - built now, not on the first request
            if self.tokens is not None:
                self.tokens.get()
            self._handler.preconnect(self.api_url, self.connect_timeout)
        except OSError as exc:
            cls = APITimeoutError if _is_timeout(exc) else APIConnectionError
            raise cls(f"cannot reach {_redact_url(self.api_url)}: {_describe_os_error(exc)}") from None

    # -- requests ---------------------------------------------------------

    def token(self) -> str:
        """The bearer credential: a cached OAuth token, or the static API key."""
        if self.tokens is None:
            assert self._api_key is not None
            return self._api_key
        return self.tokens.get()

    def build_payload(self, message: Messages, *, system: str | None = None, stream: bool = True,
                      publisher: str | None = None, sources_limit: int | None = None,
                      grounded: bool = False, include_usage: bool | None = None, response_format: Any = None,
                      **options: Any) -> dict:
        """The JSON body for `message` (string or chat messages) and completion options.

        Auto routing is used unless `model`, `model_family` or `auto_routing` is given; options
        whose value is None are left out. `publisher` (Gloo's `rag_publisher`), `sources_limit`
        (1-10) or `grounded=True` make a grounded request, with citations unless
        `include_citations=False`. `include_usage=True` asks a stream for its usage
        (`stream_options.include_usage`); by default only grounded streams ask, the one endpoint
        whose reference documents `stream_options`. `response_format` (OpenAI's `json_schema` or
        `json_object`) becomes a forced call of one tool whose parameters are the schema, as Gloo
        documents no `response_format`: see `complete()`.
        """
        payload: dict = {"messages": _as_messages(message, system)}
        payload.update({key: value for key, value in options.items() if value is not None})
        schema = _structured_schema(response_format)
        if schema is not None:
            _structured_tools(payload, schema)
        if not any(key in payload for key in _ROUTING_FIELDS):
            payload["auto_routing"] = True
        if publisher is not None:
            payload["rag_publisher"] = publisher
        if sources_limit is not None:
            payload["sources_limit"] = sources_limit
        if grounded and "rag_publisher" not in payload:
            payload["rag_publisher"] = DEFAULT_PUBLISHER
        grounded = is_grounded(payload)
        if grounded:
            payload.setdefault("include_citations", True)
        if stream and (include_usage if include_usage is not None else grounded):
            payload.setdefault("stream_options", {"include_usage": True})
        payload["stream"] = stream
        return payload

    def open(self, payload: Mapping[str, Any], *, token: str | None = None, url: str | None = None) -> Any:
        """POST `payload` (to `url`, else `url_for(payload)`) and return the open response once its status is 200.

        Retries happen here, before the first byte of the body: a 401 refreshes the token
        once; 408/429/5xx and connection failures back off and retry up to `max_retries`
        (never sooner than a Retry-After asks; a 429 not at all with `retry_rate_limited=False`).
        A request sent whole and then unanswered in time is not sent again unless
        `retry_timeouts`; a redirect is a RedirectError, never followed.
        """
        body = _encode_payload(payload)
        target = _check_url(url, "url") if url is not None else self.url_for(payload)  # grounded: <api_url>/grounded
        if token is not None:
            token = _credential(token, "token")
        started = self._clock()
        # The response must begin (status and headers) within the deadline, or else within a
        # connect timeout plus an idle timeout, however slowly its bytes trickle in.
        headers_by = time.monotonic() + (self.deadline if self.deadline is not None
                                         else self.connect_timeout + self.read_timeout)
        attempt = 0
        refreshed = False
        while True:
            bearer = token or self.token()
            timeout = self.connect_timeout
            if self.deadline is not None:
                timeout = min(timeout, max(0.001, self.deadline - (self._clock() - started)))
            request = _Request(
                target,
                data=body,
                method="POST",
                headers={
                    "Authorization": "Bearer " + bearer,
                    "Content-Type": "application/json",
                    "Accept": "text/event-stream" if payload.get("stream") else "application/json",
                    "User-Agent": _USER_AGENT,
                },
                read_timeout=self.read_timeout,
                response_deadline=headers_by,
            )
            try:
                response = self._opener.open(request, timeout=timeout)
            except urllib.error.HTTPError as exc:
                status, headers = exc.code, _Headers(exc.headers.items() if exc.headers else ())
                error_body = _read_error_body(exc)
                if status == 401 and self.tokens is not None and token is None and not refreshed:
                    refreshed = True
                    self.tokens.invalidate(bearer)
                    log.info("completions answered 401; fetching a new token and retrying once")
                    continue
                error = _status_error(status, error_body, headers)
                if (status in _RETRYABLE_STATUSES and attempt < self.max_retries and error.retryable
                        and (status != 429 or self.retry_rate_limited)):
                    wait = self._backoff(attempt, error.retry_after)
                    if wait is not None and self._within_deadline(started, wait):
                        log.info("completions answered %d; retry %d in %.2fs", status, attempt + 1, wait)
                        self._sleep(wait)
                        attempt += 1
                        continue
                raise error from None
            except _SentThenLost as exc:
                lost = APIConnectionError(
                    f"the connection to {_redact_url(target)} was lost after the request was sent ({exc}): the "
                    "server may have read it and be generating the answer, so it was not sent again")
                lost.may_have_been_processed = True
                raise lost from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                # Sent whole, then no answer in time: the server may be generating it already.
                resend = self.retry_timeouts or not isinstance(exc, _ResponseTimeout)
                if attempt < self.max_retries and resend:
                    wait = self._backoff(attempt, None)
                    if wait is not None and self._within_deadline(started, wait):
                        log.info("connection failed (%s); retry %d in %.2fs",
                                 _describe_os_error(exc), attempt + 1, wait)
                        self._sleep(wait)
                        attempt += 1
                        continue
                cls = APITimeoutError if _is_timeout(exc) else APIConnectionError
                raise cls(f"cannot reach {_redact_url(target)}: {_describe_os_error(exc)}") from None
            return self._check_response(response, payload)

    def _check_response(self, response: Any, payload: Mapping[str, Any]) -> Any:
        content_type = response.headers.get("Content-Type", "") or ""
        if payload.get("stream"):
            if not content_type.lower().startswith("text/event-stream"):
                try:
                    data = response.read(_ERROR_BODY_LIMIT)
                except (OSError, http.client.HTTPException):
                    data = b""
                response.close()
                shown = content_type or "none"
                raise UnexpectedResponseError(
                    f"expected an event stream but got Content-Type {shown} ({response.status}): "
                    f"{redact(data.decode('utf-8', 'replace'))[:200]}",
                    status=response.status,
                    body=data.decode("utf-8", "replace"),
                    content_type=content_type,
                )
        _Body(response).begin(self.read_timeout, timed=bool(payload.get("stream")))
        return response

    def _backoff(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry `attempt` + 1, or None when the server asks for too long."""
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_wait else None
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return ceiling * (0.5 + random.random() / 2)  # jitter: spread the herd

    def _within_deadline(self, started: float, wait: float) -> bool:
        return self.deadline is None or (self._clock() - started) + wait < self.deadline

    @property
    def grounded_url(self) -> str:
        """Where grounded requests go: `<api_url>/grounded`."""
        return _grounded_url(self.api_url)

    def url_for(self, payload: Mapping[str, Any]) -> str:
        """The URL a request body goes to: the grounded endpoint when it names a publisher or a sources limit."""
        return self.grounded_url if is_grounded(payload) else self.api_url

    def stream(self, message: Messages, *, system: str | None = None, token: str | None = None,
               **options: Any) -> ChatStream:
        """Start a streamed completion; iterate the returned ChatStream for text deltas.

        Options are the request's fields (`model`, `model_family`, `tradition`, `temperature`,
        `max_tokens`, `tools`, ...) plus `publisher=` / `sources_limit=` for a grounded answer.
        """
        payload = self.build_payload(message, system=system, stream=True, **options)
        return self.stream_payload(payload, token=token)

    def stream_payload(self, payload: Mapping[str, Any], *, token: str | None = None) -> ChatStream:
        """Start a streamed completion from a ready JSON body (`stream` is forced on)."""
        payload = dict(payload)
        payload["stream"] = True
        started = self._clock()
        response = self.open(payload, token=token)
        return ChatStream(response, clock=self._clock, started=started, read_timeout=self.read_timeout,
                          deadline=self.deadline, max_event_bytes=self.max_event_bytes)

    def build_response_payload(self, input: ResponseInput, *, instructions: str | None = None,
                               stream: bool = True, **fields: Any) -> dict:
        """The JSON body of a Responses API request: `input` (a string, or a list of input items:
        messages with `input_text` / `input_image` parts, `function_call_output` items) and the
        request's fields (`model`, `max_output_tokens`, `tools`, `tool_choice`, `reasoning`, `text`,
        `previous_response_id`, `metadata`, ...); fields whose value is None are left out."""
        if not isinstance(input, (str, list, tuple)):
            raise ConfigurationError("input must be a string or a list of input items")
        payload: dict = {"input": input if isinstance(input, str) else list(input)}
        if instructions is not None:
            payload["instructions"] = instructions
        payload.update({key: value for key, value in fields.items() if value is not None})
        if not isinstance(payload.get("model"), str) or not payload["model"]:
            raise ConfigurationError(
                "the Responses API needs a model (Gloo routes automatically only in Completions V2): pass "
                "model=, e.g. gloo-openai-gpt-5-mini; Gloo's model catalog lists the ids")
        payload["stream"] = stream
        return payload

    def stream_response(self, input: ResponseInput, *, instructions: str | None = None, token: str | None = None,
                        **fields: Any) -> ResponseStream:
        """Start a streamed Responses API answer; iterate the returned ResponseStream for text deltas."""
        payload = self.build_response_payload(input, instructions=instructions, stream=True, **fields)
        return self.stream_response_payload(payload, token=token)

    def stream_response_payload(self, payload: Mapping[str, Any], *, token: str | None = None) -> ResponseStream:
        """Start a streamed Responses API answer from a ready JSON body (`stream` is forced on)."""
        payload = dict(payload)
        payload["stream"] = True
        started = self._clock()
        response = self.open(payload, token=token, url=self.responses_url)
        return ResponseStream(response, clock=self._clock, started=started, read_timeout=self.read_timeout,
                              deadline=self.deadline, max_event_bytes=self.max_event_bytes)

    def retrieve_response(self, response_id: str, *, token: str | None = None,
                          max_bytes: int = 8 * 1024 * 1024) -> dict:
        """GET a stored response by its id (`resp_...`), where the server keeps them.

        Raises NotFoundError when it keeps no such response, the other status errors as `open()`
        does, APIConnectionError when it cannot be reached; nothing is retried.
        """
        if not isinstance(response_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,200}", response_id):
            raise ConfigurationError("a response id is letters, digits, '_' and '-' (such as resp_123)")
        bearer = (_credential(token, "token") if token is not None else None) or self.token()
        return self._get_json(self.responses_url.rstrip("/") + "/" + response_id, bearer, max_bytes)

    def models(self, *, refresh: bool = False, max_bytes: int = 4 * 1024 * 1024) -> list[ModelInfo]:
        """The model catalog (`models_url`): ids, families, context windows, capabilities, prices.

        Fetched once and kept for `models_ttl` seconds (`refresh=True` fetches again); Gloo's public
        catalog is asked without a token, an OpenAI-style `<base>/models` with this client's credential.
        Raises as `retrieve_response()` does; a document that lists no model gives an empty list.
        """
        with self._catalog_lock:
            cached = self._catalog
            if cached is not None and not refresh and self._clock() - cached[0] < self.models_ttl:
                return list(cached[1])
            public = "/platform/" in urllib.parse.urlsplit(self.models_url).path
            document = self._get_json(self.models_url, None if public else self.token(), max_bytes, allow_list=True)
            models = parse_model_catalog(document)
            self._catalog = (self._clock(), tuple(models))
            return models

    def model_info(self, model_id: str | None) -> ModelInfo | None:
        """The catalog's entry for `model_id` (from the cached catalog, fetched if needed), or None when
        the catalog does not list it or cannot be fetched (the failure is logged, not raised)."""
        if not model_id:
            return None
        try:
            models = self.models()
        except GlooError as exc:
            log.warning("model catalog unavailable: %s", redact(str(exc)))
            return None
        return next((model for model in models if model.id == model_id), None)

    def _get_json(self, url: str, bearer: str | None, max_bytes: int, *, allow_list: bool = False) -> Any:
        """GET `url` and return its JSON document (an object; a list too with `allow_list`); nothing retried."""
        headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
        if bearer:
            headers["Authorization"] = "Bearer " + bearer
        request = _Request(url, method="GET", headers=headers, read_timeout=self.read_timeout)
        try:
            response = self._opener.open(request, timeout=self.connect_timeout)
        except urllib.error.HTTPError as exc:
            headers = _Headers(exc.headers.items() if exc.headers else ())
            raise _status_error(exc.code, _read_error_body(exc), headers) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            cls = APITimeoutError if _is_timeout(exc) else APIConnectionError
            raise cls(f"cannot reach {_redact_url(url)}: {_describe_os_error(exc)}") from None
        with contextlib.closing(response):
            data = response.read(max_bytes + 1)
        try:
            answer = json.loads(data) if len(data) <= max_bytes else None
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict) and not (allow_list and isinstance(answer, list)):
            raise UnexpectedResponseError(f"GET {_redact_url(url)} did not answer with a JSON "
                                          f"{'document' if allow_list else 'object'}",
                                          status=getattr(response, "status", 200),
                                          body=data[:200].decode("utf-8", "replace"))
        return answer

    def respond(self, input: ResponseInput, *, on_delta: Callable[[str], None] | None = None,
                instructions: str | None = None, token: str | None = None, **fields: Any) -> ResponseResult:
        """Stream a Responses API answer to the end and return its ResponseResult (failures during
        the stream are in `result.error`, the partial output kept; failures before it raise)."""
        with self.stream_response(input, instructions=instructions, token=token, **fields) as stream:
            try:
                for delta in stream:
                    if on_delta is not None:
                        on_delta(delta)
            except StreamError as exc:
                return exc.result or stream.result()  # type: ignore[return-value]
            return stream.result()

    def complete(self, message: Messages, *, on_delta: Callable[[str], None] | None = None,
                 system: str | None = None, token: str | None = None, **options: Any) -> ChatResult:
        """Stream a completion to the end and return its ChatResult.

        Failures before the stream raise; failures during it are recorded in `result.error`
        with the partial text kept. With `response_format=` (OpenAI's `{"type": "json_schema",
        "json_schema": {"name", "schema"}}` or `{"type": "json_object"}`) the answer is the JSON
        object the model gave: `result.parsed` (its text in `result.text`); one that is not JSON or
        lacks the schema's required keys leaves `parsed` None and says why in `result.error`.
        """
        schema = _structured_schema(options.get("response_format"))
        with self.stream(message, system=system, token=token, **options) as stream:
            try:
                for delta in stream:
                    if on_delta is not None:
                        on_delta(delta)
            except StreamError as exc:
                return exc.result or stream.result()
            result = stream.result()
            if schema is not None:
                _structured_result(result, stream.accumulator, schema)
            return result


class _EventStream:
    """What every open stream shares: reading the body (blocking or not), decoding its events,
    folding them into an accumulator once, the finish grace, closing and aborting, the verdict.

    ChatStream folds chat chunks (ChatAccumulator); ResponseStream folds the Responses API's
    typed events (ResponseAccumulator). The accumulator decides what each event means.
    """

    finish_grace = 2.0  # seconds to wait after a finish for a usage chunk or [DONE]
    _kind = "stream"

    def __init__(self, response: Any, *, clock: Callable[[], float] = time.monotonic,
                 started: float | None = None, read_timeout: float | None = 60.0,
                 deadline: float | None = None, max_event_bytes: int | None = DEFAULT_MAX_EVENT_BYTES,
                 finish_grace: float | None = None, keep_text: bool = True) -> None:
        self.response = response
        self.status = getattr(response, "status", 200)
        self.headers = _Headers(response.headers.items() if getattr(response, "headers", None) else ())
        self._clock = clock
        self.accumulator = self._accumulator(keep_text=keep_text, clock=clock, started=started)
        self.read_timeout = read_timeout
        self.deadline = deadline
        if finish_grace is not None:
            self.finish_grace = finish_grace
        self.tap: Callable[[bytes], None] | None = None  # sees each body read's bytes before decoding
        self._decoder = SSEDecoder(max_event_bytes=max_event_bytes)
        self._body = _Body(response)  # the only way to the response's bytes and its socket
        self._closed = False
        self._finished_at: float | None = None  # when the accumulator first said finished
        self._progress_at = clock()  # the last whole event, or the last read that left nothing half-done
        self._body_ended = False  # the body ended (or the grace after a finish did), not a close() from outside
        self._consumed = False
        self._blocking = True
        self.settling = False  # non-blocking only: the answer is over, the body's end has not come yet
        self.error: StreamError | None = None
        self.bytes_read = 0

    def _accumulator(self, **options: Any) -> Any:
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.accumulator.finished_at is None:
            self.accumulator.finished_at = self._clock()
        # A finished answer's body is about to end: close() may wait a moment to keep the connection.
        abandon = None if self.accumulator.finished else getattr(self.response, "abandon", None)
        try:
            (abandon or self.response.close)()
        except (OSError, http.client.HTTPException):
            pass

    def abort(self) -> None:
        """Cut the connection from any thread: a read blocked in another thread returns at once."""
        self._body.abort()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the verdict ------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the answer can grow no more (a finish_reason, `[DONE]` or an error came)."""
        return self.accumulator.finished

    @property
    def outcome(self) -> StreamOutcome:
        """The one verdict on this stream so far (see StreamOutcome)."""
        error = self.error
        if error is not None and not isinstance(error, ProviderError):
            return self.accumulator.outcome(ended=True, failure=str(error), error_name=type(error).__name__,
                                            retryable=error.retryable)
        if self._closed and not self._body_ended and not self.accumulator.finished:
            return self.accumulator.outcome(failure="the stream was closed before the answer finished",
                                            error_name="closed")
        return self.accumulator.outcome(ended=self._closed)

    def grace_remaining(self) -> float | None:
        """Seconds left of the finish grace (0 when it is over), or None before the answer finished."""
        if self._finished_at is None:
            return None
        return max(0.0, self.finish_grace - (self._clock() - self._finished_at))

    # -- reading ----------------------------------------------------------

    def setblocking(self, blocking: bool) -> None:
        """`False` readies the stream for an event loop: reads never wait.

        `read_batch()` then gives `[]` when nothing has arrived, and the caller keeps the clocks:
        it calls `read_batch()` again when the socket is readable, when the finish grace is over
        and at the deadline. After `[DONE]`, `settling` may be set: the body's end is still on
        its way, so call `settle()` when the socket is readable (or `close()`), and the connection
        goes back to its pool.
        """
        setter = getattr(self.response, "setblocking", None)
        if setter is None:
            raise GlooError("this stream's response cannot be read without blocking")
        setter(blocking)
        self._blocking = blocking

    def settle(self) -> bool:
        """Non-blocking, after the answer: read what has come of the body's end; True once closed."""
        if self._closed or not self._body.pollable:
            self.close()
            return True
        budget = _DRAIN_BYTES
        try:
            while not self._body.eof and budget > 0:
                budget -= len(self._body.read())
        except _WOULD_BLOCK:
            if budget > 0:
                return False
        except (OSError, http.client.HTTPException, ValueError):
            pass  # close() finds the connection unusable and drops it
        self.close()
        return True

    def _read(self, grace: float | None = None) -> bytes:
        if self.deadline is not None and self._clock() - self.accumulator.started >= self.deadline:
            raise socket.timeout("deadline")
        if self._blocking and self._body.pollable and (
                self.deadline is not None or grace is not None or self._decoder.has_partial_event):
            limits = [t for t in (self.read_timeout, grace) if t is not None]
            if self.read_timeout is not None and self._decoder.has_partial_event:
                limits.append(self.read_timeout - (self._clock() - self._progress_at))
            if self.deadline is not None:
                limits.append(self.deadline - (self._clock() - self.accumulator.started))
            self._body.settimeout(max(0.001, min(limits)))
        return self._body.read()

    def fileno(self) -> int:
        """The connection's file descriptor, to wait on it with select/poll."""
        return self._body.fileno()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded: read them before waiting on the socket."""
        return self._body.buffered

    def read_batch(self) -> list[ServerSentEvent] | None:
        """One network read's worth of events (possibly none), folded into `accumulator`; None at the end.

        After a finish it waits at most `finish_grace` seconds for more (usage, `[DONE]`), then
        ends cleanly. Before a finish, raises ConnectionLostError or StreamTimeoutError on a
        transport failure, and EventTooLargeError when one event passes `max_event_bytes`.
        """
        batch = self._next_batch()
        return None if batch is None else batch[0]

    def _next_batch(self) -> tuple[list[ServerSentEvent], list[dict]] | None:
        accumulator = self.accumulator
        if self._closed or self._body.eof or accumulator.done:
            self._end_of_body()
            return None
        grace = self.grace_remaining()
        if grace is not None and grace <= 0:
            self._end_of_body()  # finished, and nothing more came in time: a clean end
            return None
        try:
            if self._decoder.owes_error:  # an event was too large: say so before waiting on the network
                self._feed(b"")
            try:
                data = self._read(grace)
            except socket.timeout:
                if self._finished_at is not None:
                    self._end_of_body()
                    return None
                if self.deadline is not None and self._clock() - accumulator.started >= self.deadline:
                    raise self._fail(StreamTimeoutError,
                                     f"the stream passed its {self.deadline:g}s deadline") from None
                if self._decoder.has_partial_event:
                    raise self._fail(StreamTimeoutError, f"no complete event from the server for "
                                                         f"{self.read_timeout:g}s") from None
                raise self._fail(StreamTimeoutError, f"no data from the server for {self.read_timeout:g}s") from None
            except _WOULD_BLOCK:
                return [], []  # non-blocking, and nothing more has arrived
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._closed or self._finished_at is not None:
                    self.close()
                    return None
                raise self._fail(ConnectionLostError,
                                 f"connection lost mid-stream: {_describe_os_error(exc)}") from None
            if not data:
                if self._body.eof:
                    self._end_of_body()
                    return None
                return [], []  # only transfer framing arrived
            self.bytes_read += len(data)
            if self.tap is not None:
                self.tap(data)
            events = self._feed(data)
            self._note_progress(bool(events))
        except EventTooLargeError:
            if self._finished_at is None:
                raise
            self.error = None  # the answer was whole before the oversized event: it stays whole
            self.close()
            return None
        return self._fold(events)

    def _note_progress(self, events: bool) -> None:
        """Idle means no progress towards an event for `read_timeout` seconds, on the clock: a body
        that trickles bytes without ever completing one times out too (blocking reads; an event
        loop keeps this clock itself)."""
        now = self._clock()
        if events or not self._decoder.has_partial_event:
            self._progress_at = now
        elif (self._blocking and self.read_timeout is not None and self._finished_at is None
              and now - self._progress_at >= self.read_timeout):
            raise self._fail(StreamTimeoutError, f"no complete event from the server for {self.read_timeout:g}s")

    def _fold(self, events: list[ServerSentEvent]) -> tuple[list[ServerSentEvent], list[dict]]:
        accumulator = self.accumulator
        chunks: list[dict] = []
        for position, event in enumerate(events):
            chunk = accumulator.add_event(event)
            if chunk is not None:
                chunks.append(chunk)
            if accumulator.done:
                del events[position + 1:]  # nothing after [DONE] (or a final event) belongs to the answer
                break
        if self._finished_at is None and accumulator.finished:
            self._finished_at = self._clock()
        self._folded(chunks)
        return events, chunks

    def _folded(self, chunks: list[dict]) -> None:
        """What a batch's JSON objects mean beyond the accumulator (nothing, but for chat)."""

    def _feed(self, data: bytes) -> list[ServerSentEvent]:
        try:
            return self._decoder.feed(data)
        except EventTooLargeError as exc:
            raise self._fail(EventTooLargeError, str(exc)) from None

    def _end_of_body(self) -> None:
        self._body_ended = True
        try:
            if not self._closed and not self.settling:
                self._decoder.close()
        except EventTooLargeError as exc:
            if self._finished_at is None:
                raise self._fail(EventTooLargeError, str(exc)) from None
        finally:
            if (not self._blocking and self.accumulator.done and not self._body.eof and not self._closed
                    and self._body.pollable):
                self.settling = True  # [DONE] came first: settle() reads the body's end as it arrives
            else:
                self.close()

    def _claim(self) -> None:
        if self._consumed:
            raise GlooError(f"a {type(self).__name__} can be read only once")
        self._consumed = True

    def event_batches(self) -> Iterator[list[ServerSentEvent]]:
        """The events completed by each network read, as they arrive (empty batches skipped)."""
        self._claim()
        try:
            while True:
                batch = self.read_batch()
                if batch is None:
                    return
                if batch:
                    yield batch
        finally:
            self.close()

    def _objects(self) -> Iterator[dict]:
        """The events' JSON objects to the end; then raises what the verdict says (see chunks())."""
        self._claim()
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                yield from batch[1]
        finally:
            self.close()
        self._raise_for_outcome()

    def _raise_for_outcome(self) -> None:
        outcome = self.outcome
        if outcome.kind == "provider_error":
            raise self._fail(ProviderError, outcome.message, code=outcome.error_code, name=outcome.error_name)
        if outcome.kind == "cut_short" and self.error is None:
            raise self._fail(ConnectionLostError, outcome.message)

    def _fail(self, cls: type, message: str, **fields: Any) -> StreamError:
        self.close()
        error = cls(message, **fields)
        self.error = error
        result = self.result()
        error.text, error.result = result.text, result
        return error

    def result(self) -> Any:
        """What has been received so far (the whole answer once reading ends), with the verdict."""
        outcome = self.outcome
        error = outcome.message if outcome.kind in ("provider_error", "cut_short") else None
        return self.accumulator.result(error=error, outcome=outcome)

    @property
    def text(self) -> str:
        return self.accumulator.text


_S = TypeVar("_S", bound=_EventStream)


class ChatStream(_EventStream):
    """An open completion stream.

    Iterate it for text deltas, or use `chunks()` for the chunk dicts, `events()` for the raw
    events, `event_batches()` / `read_batch()` for the events of each network read. Every way of
    reading folds the events into `accumulator` once, so `outcome` is the one verdict on the
    stream and `result()` the ChatResult so far. Mid-stream failures raise a StreamError carrying
    the partial text; a finished answer never becomes an error. Stopping early (break, close, an
    exception, Ctrl-C) closes the connection at once.
    """

    accumulator: ChatAccumulator

    def _accumulator(self, **options: Any) -> ChatAccumulator:
        return ChatAccumulator(**options)

    def _folded(self, chunks: list[dict]) -> None:
        accumulator = self.accumulator
        accumulator._unclaimed, accumulator._claimed = chunks[:], 0  # only this batch's: memory stays flat

    def events(self) -> Iterator[ServerSentEvent]:
        """Every event, one at a time."""
        for batch in self.event_batches():
            yield from batch

    def chunks(self) -> Iterator[dict]:
        """The chunk dicts, read to `data: [DONE]`, the end of the body, or the end of the finish grace.

        At the end, raises ProviderError for a structured error, ConnectionLostError when the
        body ended before any finish_reason.
        """
        return self._objects()

    def __iter__(self) -> Iterator[str]:
        """Text deltas as they arrive."""
        for chunk in self.chunks():
            content = extract_token_content(chunk)
            if content:
                yield content

    def result(self) -> ChatResult:
        """What has been received so far (the whole answer once reading ends), with the verdict."""
        return super().result()


class ResponseStream(_EventStream):
    """An open Responses API stream (`GlooClient.stream_response()`).

    Iterate it for text deltas; `events()` yields every typed event as a dict (`type`,
    `sequence_number`, ...), those of unknown types too; `result()` is the ResponseResult so far,
    with the same `outcome` vocabulary as a ChatStream's. Reading, closing, `read_batch()` and
    non-blocking use are a ChatStream's. Mid-stream failures (`response.failed`, an `error`
    event, a dropped connection) raise a StreamError carrying the partial text.
    """

    accumulator: ResponseAccumulator

    def _accumulator(self, **options: Any) -> ResponseAccumulator:
        return ResponseAccumulator(**options)

    def events(self) -> Iterator[dict]:
        """Every typed event, as it arrives; at the end raises as iterating does."""
        return self._objects()

    def __iter__(self) -> Iterator[str]:
        """Text deltas (`response.output_text.delta`) as they arrive."""
        for event in self.events():
            if event.get("type") == "response.output_text.delta":
                delta = event.get("delta")
                if isinstance(delta, str) and delta:
                    yield delta

    def result(self) -> ResponseResult:
        """What has been received so far (the whole response once reading ends), with the verdict."""
        return super().result()


# ---------------------------------------------------------------------------
# The tutorial's functions (same names and behaviour, so tutorial code runs unchanged)
# ---------------------------------------------------------------------------

_default_lock = threading.Lock()
_default_client: GlooClient | None = None


def _client() -> GlooClient:
    global _default_client
    with _default_lock:
        if _default_client is None:
            load_dotenv()
            _default_client = GlooClient()
        return _default_client


def _reset_default_client() -> None:
    """Forget the shared client (tests, or after changing the environment)."""
    global _default_client
    with _default_lock:
        _default_client = None


def ensure_valid_token() -> str:
    """A valid access token from the shared token cache, fetched or refreshed when needed."""
    return _client().token()


def handle_stream_error(status_code: int, response_body: str = "") -> None:
    """Raise the error for a non-200 status, with the tutorial's messages; 200 returns None."""
    if status_code == 200:
        return None
    status, body = int(status_code), response_body or ""
    error = _status_error(status, body)
    error.args = (redact(_status_message(status, body)),)  # the tutorial's exact words
    raise error


def get_access_token() -> dict[str, Any]:
    """The tutorial's token record: `access_token`, `token_type`, `expires_in` (seconds left) and
    `expires_at` (a Unix time), from the shared cache (fetched or refreshed when needed).

    With GLOO_API_KEY the key itself is the token; it does not expire (an hour is reported).
    """
    client = _client()
    token = client.token()
    left = 3600
    if client.tokens is not None:
        left = max(0, int(client.tokens.expires_at - client._clock()))
    return {"access_token": token, "token_type": "Bearer", "expires_in": left, "expires_at": int(time.time()) + left}


class TutorialResponse:
    """The open streaming response, with the `requests` surface the tutorial's code uses:
    `status_code`, `headers`, `text`, `json()`, `iter_lines()`, `iter_content()`, `close()`, `with`.

    Everything else (`status`, `read()`, `fp`, ...) is the underlying http.client response's.
    """

    def __init__(self, response: Any) -> None:
        self.raw = response
        self.status_code: int = getattr(response, "status", 200)
        self.headers = response.headers
        self.url = getattr(response, "url", None)
        self._body = _Body(response)
        self._content: bytes | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "raw":  # not set yet (a half-built or copied object): no recursion
            raise AttributeError(name)
        return getattr(self.raw, name)

    def __enter__(self) -> TutorialResponse:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 400

    def close(self) -> None:
        """Close the connection (idempotent)."""
        try:
            self.raw.close()
        except (OSError, http.client.HTTPException):
            pass

    def _read(self) -> bytes:
        """The next body bytes as they arrive; b"" once the body has ended."""
        while not self._body.eof:
            data = self._body.read()
            if data:
                return data
        return b""

    def iter_content(self, chunk_size: int | None = 1, decode_unicode: bool = False) -> Iterator[Any]:
        """The body in pieces of at most `chunk_size` bytes (None: as they arrive)."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace") if decode_unicode else None
        while True:
            data = self._read()
            if not data:
                break
            step = chunk_size if chunk_size and chunk_size > 0 else len(data)
            for start in range(0, len(data), step):
                piece = data[start:start + step]
                if decoder is None:
                    yield piece
                else:
                    text = decoder.decode(piece)
                    if text:
                        yield text
        if decoder is not None:
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        self.close()

    def iter_lines(self, chunk_size: int = 512, decode_unicode: bool = False,
                   delimiter: str | bytes | None = None) -> Iterator[Any]:
        """The body line by line, as lines arrive, without their ends (blank lines included).

        Lines end at CR, LF or CRLF only (the SSE rule; never `str.splitlines()`).
        """
        pending = b""
        for data in self.iter_content(None):
            if pending.endswith(b"\r") and data.startswith(b"\n"):
                data = data[1:]  # the LF of a CRLF split across reads
            pending += data
            if delimiter is not None:
                mark = delimiter.encode("utf-8") if isinstance(delimiter, str) else delimiter
                *lines, pending = pending.split(mark)
            else:
                lines, pending = _split_lines(pending)
            for line in lines:
                yield line.decode("utf-8", "replace") if decode_unicode else line
        if delimiter is None and pending.endswith(b"\r"):
            pending, last = pending[:-1], True
        else:
            last = bool(pending)
        if last:
            yield pending.decode("utf-8", "replace") if decode_unicode else pending

    @property
    def content(self) -> bytes:
        """The rest of the body, read to its end (the stream is consumed)."""
        if self._content is None:
            self._content = b"".join(self.iter_content(None))
        return self._content

    @property
    def text(self) -> str:
        """The rest of the body as text (UTF-8)."""
        return self.content.decode("utf-8", "replace")

    def json(self, **kwargs: Any) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.text, **kwargs)


def _split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines of `data` (ended by CR, LF or CRLF) and the unfinished rest.

    A CR at the very end stays in the rest: its LF may come with the next read.
    """
    lines: list[bytes] = []
    start, size = 0, len(data)
    i = 0
    while i < size:
        byte = data[i]
        if byte == 0x0A or byte == 0x0D:
            if byte == 0x0D and i + 1 == size:
                break
            lines.append(data[start:i])
            i += 2 if byte == 0x0D and data[i + 1] == 0x0A else 1
            start = i
            continue
        i += 1
    return lines, data[start:]


def make_streaming_request(message: Messages, token: str | None = None, **options: Any) -> TutorialResponse:
    """Open the streaming POST and return the response once its status is 200 (else raise).

    The response works like the tutorial's `requests` one: `status_code`, `iter_lines(decode_unicode=True)`, ...
    """
    client = _client()
    return TutorialResponse(client.open(client.build_payload(message, stream=True, **options), token=token))


def parse_sse_line(line: str | bytes) -> None | str | dict:
    """One line of the stream: None (not data, or not JSON), "[DONE]", or the chunk dict. Never raises."""
    if isinstance(line, (bytes, bytearray)):
        line = bytes(line).decode("utf-8", "replace")
    if not isinstance(line, str):
        return None
    line = line.rstrip("\r\n")
    if not line.startswith("data:"):
        return None
    data = line[5:]
    if data[:1] == " ":
        data = data[1:]
    if data.strip() == "[DONE]":
        return "[DONE]"
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return chunk if isinstance(chunk, dict) else None


def stream_completion(message: Messages, token: str | None = None, **options: Any) -> dict[str, Any]:
    """Stream a completion to the end; returns text, token_count, duration_ms, finish_reason, ...

    Failures before the stream raise; a mid-stream failure keeps the partial text and sets `error`.
    """
    on_delta = options.pop("on_delta", None)
    return _client().complete(message, token=token, on_delta=on_delta, **options).to_dict()


def render_stream_to_terminal(message: Messages, token: str | None = None, *, file: Any = None,
                              **options: Any) -> dict[str, Any]:
    """Print `Prompt: …`, then `Response: ` and each token as it arrives, then `[N tokens, finish_reason=X]`."""
    out = file if file is not None else sys.stdout
    prompt = message if isinstance(message, str) else _last_user_text(message)
    print(f"Prompt: {prompt}", file=out)
    print("Response: ", end="", file=out, flush=True)

    def show(delta: str) -> None:
        out.write(delta)
        out.flush()

    result = stream_completion(message, token, on_delta=show, **options)
    print(file=out)
    if result["error"]:
        print(f"[error: {result['error']}]", file=out)
    print(f"[{result['token_count']} tokens, finish_reason={result['finish_reason']}]", file=out, flush=True)
    return result


def _last_user_text(messages: Any) -> str:
    try:
        for item in reversed(list(messages)):
            if item.get("role") == "user":
                return str(item.get("content", ""))
    except (TypeError, AttributeError):
        pass
    return ""


# ---------------------------------------------------------------------------
# Command-line memory: every exchange in a SQLite file (standard library sqlite3)
# ---------------------------------------------------------------------------
#
# A conversation is its id, a title (its first question), when it began and last changed, and its
# exchanges: question, answer, model, usage, timing, outcome, sources. `-c` continues the last
# one, `--cid ID` a given one; `--history [QUERY]` lists or searches (FTS5 where the sqlite3 build
# has it, LIKE otherwise); `--export ID` prints the conversation in the page's JSON format.

CONVERSATION_FORMAT = "gloo-stream/conversation"  # the JSON of --export (and of the page's export)
_HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, system TEXT);
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL REFERENCES conversations(id),
    at REAL NOT NULL, question TEXT NOT NULL, answer TEXT NOT NULL, model TEXT, usage TEXT,
    ttft_ms INTEGER, duration_ms INTEGER, outcome TEXT, finish_reason TEXT, error TEXT, sources TEXT,
    cost_usd REAL);
CREATE INDEX IF NOT EXISTS exchanges_by_conversation ON exchanges(conversation, id);
"""
_HISTORY_FTS = """
CREATE VIRTUAL TABLE IF NOT EXISTS exchanges_fts USING fts5(
    question, answer, content='exchanges', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS exchanges_fts_insert AFTER INSERT ON exchanges BEGIN
    INSERT INTO exchanges_fts(rowid, question, answer) VALUES (new.id, new.question, new.answer);
END;
"""


def _data_dir() -> str:
    """Where the command line keeps its history: GLOO_DATA_DIR, else the platform's user data folder."""
    explicit = os.environ.get("GLOO_DATA_DIR", "").strip()
    if explicit:
        return explicit
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or os.path.join(home, "AppData", "Roaming")
    elif sys.platform == "darwin":
        base = os.path.join(home, "Library", "Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return os.path.join(base, "gloo-stream")


def _history_enabled() -> bool:
    return (os.environ.get("GLOO_LOG") or "1").strip().lower() not in ("0", "false", "no", "off")


class _History:
    """The command line's conversations in `<data dir>/history.db` (0600: answers can be private)."""

    def __init__(self, path: str | None = None) -> None:
        try:
            import sqlite3
        except ImportError:  # a Python built without sqlite3
            raise ConfigurationError("this Python has no sqlite3 module: the history is off (--no-log)") from None
        self.path = path or os.path.join(_data_dir(), "history.db")
        self._errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self.db = sqlite3.connect(self.path, timeout=5)
            self.db.executescript(_HISTORY_SCHEMA)
            try:
                self.db.executescript(_HISTORY_FTS)
                self.fts = True
            except sqlite3.OperationalError:  # no FTS5 in this sqlite3: LIKE instead
                self.fts = False
        except self._errors as exc:
            raise ConfigurationError(f"the history at {self.path} cannot be opened: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def new(self, question: str, system: str | None) -> str:
        conversation = binascii.hexlify(os.urandom(6)).decode()
        now = time.time()
        title = " ".join(question.split())[:80] or "(untitled)"
        with self.db:
            self.db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?)", (conversation, title, now, now, system))
        return conversation

    def resolve(self, conversation: str | None) -> str:
        """A conversation's id from `conversation` (an id, a unique prefix, or None/"last": the latest)."""
        if conversation in (None, "", "last"):
            row = self.db.execute("SELECT id FROM conversations ORDER BY updated DESC LIMIT 1").fetchone()
            if row is None:
                raise ConfigurationError("there is no conversation to continue yet: ask without -c first")
            return row[0]
        assert conversation is not None
        rows = self.db.execute("SELECT id FROM conversations WHERE id = ? OR id LIKE ? ESCAPE '\\' LIMIT 2",
                               (conversation, _like_prefix(conversation))).fetchall()
        exact = [row[0] for row in rows if row[0] == conversation]
        if exact or len(rows) == 1:
            return exact[0] if exact else rows[0][0]
        why = "matches more than one conversation" if rows else "is not a conversation in the history"
        raise ConfigurationError(f"{conversation!r} {why}: --history lists them")

    def system(self, conversation: str) -> str | None:
        row = self.db.execute("SELECT system FROM conversations WHERE id = ?", (conversation,)).fetchone()
        return row[0] if row else None

    def messages(self, conversation: str) -> list[dict]:
        """The conversation so far as chat messages (exchanges that got an answer)."""
        out: list[dict] = []
        for question, answer in self.db.execute(
                "SELECT question, answer FROM exchanges WHERE conversation = ? ORDER BY id", (conversation,)):
            if answer:
                out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return out

    def record(self, conversation: str, question: str, result: Any, cost: float | None,
               system: str | None = None) -> None:
        """One exchange; a failure to write is a warning, never a failed answer."""
        outcome = getattr(result, "outcome", None)
        try:
            with self.db:
                self.db.execute(
                    "INSERT INTO exchanges (conversation, at, question, answer, model, usage, ttft_ms, duration_ms,"
                    " outcome, finish_reason, error, sources, cost_usd) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (conversation, time.time(), question, result.text, result.model,
                     json.dumps(result.usage) if result.usage else None, result.ttft_ms, result.duration_ms,
                     outcome.kind if outcome is not None else None, result.finish_reason, result.error,
                     json.dumps(getattr(result, "sources", None) or []), cost))
                self.db.execute("UPDATE conversations SET updated = ?, system = COALESCE(?, system) WHERE id = ?",
                                (time.time(), system, conversation))
        except self._errors as exc:
            log.warning("the exchange was not saved to %s: %s", self.path, exc)

    def recent(self, query: str = "", limit: int = 20) -> list[tuple[str, float, int, str]]:
        """(id, updated, exchanges, title) of the latest conversations, or of those whose questions,
        answers or title hold `query`'s words."""
        select = ("SELECT c.id, c.updated, (SELECT COUNT(*) FROM exchanges e WHERE e.conversation = c.id), c.title "
                  "FROM conversations c")
        words = query.split()
        if not words:
            return self.db.execute(select + " ORDER BY c.updated DESC LIMIT ?", (limit,)).fetchall()
        if self.fts:
            match = " ".join('"' + word.replace('"', '""') + '"' for word in words)
            where = (" WHERE c.id IN (SELECT e.conversation FROM exchanges_fts f JOIN exchanges e ON e.id = f.rowid"
                     " WHERE exchanges_fts MATCH ?) OR c.title LIKE ? ESCAPE '\\'")
            params: tuple = (match, _like_contains(query))
        else:
            where = (" WHERE c.id IN (SELECT conversation FROM exchanges WHERE question LIKE ? ESCAPE '\\'"
                     " OR answer LIKE ? ESCAPE '\\') OR c.title LIKE ? ESCAPE '\\'")
            params = (_like_contains(query),) * 3
        return self.db.execute(select + where + " ORDER BY c.updated DESC LIMIT ?", params + (limit,)).fetchall()

    def import_record(self, record: Any) -> tuple[str, int]:
        """A conversation from its JSON (the page's export, or --export's) as a new one here; returns
        (id, exchanges). A ConfigurationError when it is not that format."""
        if not (isinstance(record, dict) and record.get("format") == CONVERSATION_FORMAT and record.get("version") == 1
                and isinstance(record.get("turns"), list)):
            raise ConfigurationError(f"not a conversation file (a {CONVERSATION_FORMAT} JSON, version 1)")
        turns = [turn for turn in record["turns"] if isinstance(turn, dict) and isinstance(turn.get("q"), str)]
        if not turns:
            raise ConfigurationError("the conversation file holds no exchange")
        given = record.get("title")
        title: str = given if isinstance(given, str) and given.strip() else turns[0]["q"]
        system = record.get("system")
        conversation = self.new(title, system if isinstance(system, str) and system else None)
        text = lambda value: value if isinstance(value, str) else None  # noqa: E731
        try:
            with self.db:
                for turn in turns:
                    at = turn.get("at")
                    self.db.execute(
                        "INSERT INTO exchanges (conversation, at, question, answer, model, usage, outcome, error,"
                        " sources) VALUES (?,?,?,?,?,?,?,?,?)",
                        (conversation, at / 1000 if isinstance(at, (int, float)) and math.isfinite(at) else time.time(),
                         turn["q"], text(turn.get("a")) or "", text(turn.get("model")),
                         json.dumps(turn["usage"]) if isinstance(turn.get("usage"), dict) else None,
                         text(turn.get("outcome")), text(turn.get("error")),
                         json.dumps([s for s in turn.get("sources") or [] if isinstance(s, dict)]
                                    if isinstance(turn.get("sources"), list) else [])))
        except self._errors as exc:
            raise ConfigurationError(f"the conversation could not be saved to {self.path}: {exc}") from None
        return conversation, len(turns)

    def export(self, conversation: str) -> dict:
        """The conversation in the page's JSON format (CONVERSATION_FORMAT, version 1)."""
        head = self.db.execute("SELECT id, title, created, updated, system FROM conversations WHERE id = ?",
                               (conversation,)).fetchone()
        turns = []
        for row in self.db.execute(
                "SELECT at, question, answer, model, usage, ttft_ms, duration_ms, outcome, finish_reason, error,"
                " sources, cost_usd FROM exchanges WHERE conversation = ? ORDER BY id", (conversation,)):
            at, question, answer, model, usage, ttft, duration, outcome, reason, error, sources, cost = row
            turns.append({"q": question, "a": answer, "model": model, "error": error, "outcome": outcome,
                          "finish_reason": reason, "usage": json.loads(usage) if usage else None,
                          "ttft_ms": ttft, "duration_ms": duration, "cost_usd": cost,
                          "sources": json.loads(sources) if sources else [], "at": int(at * 1000)})
        return {"format": CONVERSATION_FORMAT, "version": 1, "id": head[0], "title": head[1],
                "created": int(head[2] * 1000), "updated": int(head[3] * 1000), "system": head[4], "turns": turns}


def _like_contains(text: str) -> str:
    return "%" + re.sub(r"([\\%_])", r"\\\1", text.strip()) + "%"


def _like_prefix(text: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", text) + "%"


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

_EXIT_OK, _EXIT_ERROR, _EXIT_USAGE, _EXIT_INTERRUPTED = 0, 1, 2, 130
_MAX_TIMEOUT = 86400.0
_MAX_TOKENS = 1_000_000
_OFFLINE_DELAY = 0.02  # seconds between the simulator's tokens: slow enough to see the answer stream

# Every control character but tab and newline, in caret notation (ESC shows as ^[, the C1 controls
# such as the 8-bit CSI as M-^[ like `cat -v`): with no ESC, BEL or C1 left, no CSI, OSC (titles,
# OSC 52 clipboard writes, hyperlinks), DCS or hidden-text sequence can reach a terminal.
_TERMINAL_SAFE = {c: "^" + chr(c + 0x40) for c in range(0x20) if c not in (0x09, 0x0A)}
_TERMINAL_SAFE[0x7F] = "^?"
_TERMINAL_SAFE.update({c: "M-^" + chr(c - 0x40) for c in range(0x80, 0xA0)})
# Bidirectional embeddings, overrides and isolates reorder what the eye sees ("Trojan Source"):
# shown by name. (The plain marks U+200E/U+200F, which right-to-left text needs, pass.)
_TERMINAL_SAFE.update({c: f"<U+{c:04X}>" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})
# json.dumps leaves DEL and the C1 controls as they are; a \u escape is the same JSON, and inert.
_JSON_SAFE = {c: f"\\u{c:04x}" for c in range(0x7F, 0xA0)}


def _terminal_safe(text: str) -> str:
    """`text` with control characters shown, not obeyed (CRLF kept as a newline)."""
    return text.replace("\r\n", "\n").translate(_TERMINAL_SAFE)


class _SafeText:
    """_terminal_safe for text that arrives in pieces: a CR at a piece's end may start a CRLF."""

    def __init__(self) -> None:
        self._cr = False

    def feed(self, text: str) -> str:
        if self._cr:
            text, self._cr = "\r" + text, False
        if text.endswith("\r"):
            text, self._cr = text[:-1], True
        return _terminal_safe(text)

    def flush(self) -> str:
        cr, self._cr = self._cr, False
        return "^M" if cr else ""


class _UsageError(Exception):
    """A bad command line: exit 2 with the usage line."""


class _HintedError(ConfigurationError):
    """A configuration error with a next step for the person at the command line."""

    def __init__(self, message: str, *, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # raises, never exits
        raise _UsageError(message)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _columns(stream: Any) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80


def _replace_unencodable(stream: Any, errors: str) -> None:
    # A cp1252 console or PYTHONIOENCODING=ascii must not end the answer with UnicodeEncodeError.
    # A lone surrogate in an answer ("\ud800" is valid JSON) fails even UTF-8 with surrogateescape.
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None and getattr(stream, "errors", errors) in ("strict", "surrogateescape"):
        try:
            reconfigure(errors=errors)
        except (ValueError, OSError):
            pass


def _silence(stream: Any) -> None:
    """Point a stream whose reader went away at /dev/null, so exit's flush cannot raise again."""
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, ValueError, OSError):
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


def _float_in(low: float, high: float, *, low_open: bool = False, unit: str = "") -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (low < value if low_open else low <= value) or not value <= high:  # also rejects nan, inf
            low_words = f"more than {low:g}" if low_open else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"expected a number{unit} {low_words} and at most {high:g}, not {text!r}")
        return value
    return parse


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, not {text!r}")
        return value
    return parse


def _name(text: str) -> str:
    if not text.strip() or not text.isprintable() or len(text) > 200:
        raise argparse.ArgumentTypeError(f"expected a name of 1 to 200 printable characters, not {text!r}")
    return text


class _Spinner:
    """A waiting indicator on stderr until the first token: one line, never wider than the terminal."""

    _FRAMES = "|/-\\"

    def __init__(self, stream: Any, *, color: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._color = color
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = 0  # characters on the line now

    def start(self) -> _Spinner:
        self._started = self._clock()
        self._thread = threading.Thread(target=self._run, name="gloo-spinner", daemon=True)
        self._thread.start()
        return self

    def line(self, frame: int, elapsed: float, columns: int) -> str:
        """The frame's text, cut to fit `columns` (the last column stays free: writing it wraps)."""
        text = f"{self._FRAMES[frame % len(self._FRAMES)]} waiting for the first token"
        if elapsed >= 2:
            text += f" ({elapsed:.0f}s)"
        return text[:max(columns - 1, 0)]

    def _run(self) -> None:
        frame = 0
        try:
            while not self._stop.wait(0.1):
                text = self.line(frame, self._clock() - self._started, _columns(self._stream))
                pad = " " * max(self._shown - len(text), 0)
                shown = f"\033[2m{text}\033[0m" if self._color and text else text
                self._stream.write("\r" + shown + pad + "\r" * bool(pad))
                self._stream.flush()
                self._shown = len(text)
                frame += 1
        except (OSError, ValueError):  # the terminal went away: nothing to show any more
            pass

    def stop(self) -> None:
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        if self._shown:
            try:
                self._stream.write("\r" + " " * self._shown + "\r")
                self._stream.flush()
            except (OSError, ValueError):
                pass
            self._shown = 0


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gloo_stream.py",
        usage="%(prog)s [options] [question]",
        description="Stream a Gloo AI chat completion to stdout, token by token.",
        epilog=(
            "Try it without credentials: python gloo_stream.py --offline \"Hi\". "
            "Credentials: GLOO_CLIENT_ID and GLOO_CLIENT_SECRET (environment or .env), or GLOO_API_KEY (a Gloo "
            "Studio API key); GLOO_API_URL and GLOO_TOKEN_URL point elsewhere. A question and piped text are "
            "joined (question first). Exit codes: 0 done (or the reader of stdout stopped), 1 API or stream "
            "error, 2 usage or configuration error, 130 interrupted."
        ),
    )
    parser.add_argument("question", nargs="?", default=None,
                        help="the question; piped stdin is added after it ('-' or no question: stdin only)")
    parser.add_argument("--offline", action="store_true",
                        help="answer from the built-in simulator (fake_gloo.py beside this file): no credentials, "
                             "no network")
    parser.add_argument("--api", choices=["chat", "responses"], default=None,
                        help="Gloo's Completions V2 (chat, the default, or GLOO_API) or its Responses API "
                             "(responses: needs --model)")
    parser.add_argument("--system", metavar="TEXT",
                        help="a system message sent before the question (the Responses API's instructions)")
    routing = parser.add_mutually_exclusive_group()
    routing.add_argument("--model", type=_name, metavar="ID",
                         help="a specific model, e.g. gloo-anthropic-claude-sonnet-4.5 (default: auto routing)")
    routing.add_argument("--model-family", choices=["openai", "anthropic", "google", "open source"],
                         help="let Gloo pick a model of this family")
    parser.add_argument("--tradition", choices=["evangelical", "catholic", "mainline", "not_faith_specific"],
                        help="the theological perspective of the answer")
    parser.add_argument("--temperature", type=_float_in(0, 2), metavar="T", help="sampling temperature, 0 to 2")
    parser.add_argument("--max-tokens", type=_int_in(1, _MAX_TOKENS), metavar="N",
                        help=f"the most tokens to generate, 1 to {_MAX_TOKENS}")
    parser.add_argument("--usage", action="store_true",
                        help="ask the stream for its token usage (shown in the stats line and in --json, with "
                             "the answer's cost where the model catalog prices the model)")
    parser.add_argument("--list-models", action="store_true",
                        help="list the model catalog (id, family, context window, capabilities, price) and exit")
    parser.add_argument("--endpoint", choices=list(ENDPOINTS),
                        help="Gloo's completions endpoint (default, or GLOO_ENDPOINT) or the guarded one")
    responses = parser.add_argument_group("the Responses API (--api responses)")
    responses.add_argument("--image", metavar="PATH", action="append",
                           help="attach an image (PNG, JPEG, WebP or GIF) for the model to see; may repeat")
    responses.add_argument("--no-reasoning", action="store_true",
                           help="do not show the model's reasoning summary (shown dimmed on stderr by default)")
    responses.add_argument("--image-generation", action="store_true",
                           help="offer the image_generation tool: the answer may be an image, written to a file")
    responses.add_argument("--image-dir", metavar="DIR", default=".",
                           help="where generated images are written (default: the current folder)")
    grounded = parser.add_argument_group("grounded answers (with sources)")
    grounded.add_argument("--publisher", type=_name, metavar="NAME",
                          help="answer from this publisher's content (Gloo's rag_publisher, e.g. GlooGrounded)")
    grounded.add_argument("--sources", type=_int_in(1, 10), metavar="N", help="at most N sources, 1 to 10")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="print one JSON object at the end (also for errors)")
    output.add_argument("--raw", action="store_true",
                        help="print the response body's bytes as received (for debugging)")
    output.add_argument("--chat", action="store_true",
                        help="a conversation: ask, read the answer, ask again (/help lists its commands; "
                             "Ctrl-D or /exit leaves)")
    memory = parser.add_argument_group(
        "history (every exchange is kept in a SQLite file in GLOO_DATA_DIR or your user data folder)")
    memory.add_argument("-c", "--continue", dest="continue_", action="store_true",
                        help="continue the last conversation (its exchanges are sent before the question)")
    memory.add_argument("--cid", metavar="ID", help="continue the conversation with this id (or a unique prefix)")
    memory.add_argument("--history", nargs="?", const="", metavar="QUERY",
                        help="list the latest conversations, or those whose words match QUERY, and exit")
    memory.add_argument("--export", metavar="ID", help="print a conversation (an id, or 'last') as JSON and exit")
    memory.add_argument("--import", dest="import_file", metavar="FILE",
                        help="add a conversation from its JSON (the page's Export JSON, or --export's; - for "
                             "stdin) to the history and exit; continue it with --cid")
    memory.add_argument("--no-log", action="store_true", help="keep nothing of this run (also GLOO_LOG=0)")
    parser.add_argument("--timeout", type=_float_in(0, _MAX_TIMEOUT, low_open=True, unit=" of seconds"),
                        default=60.0, metavar="SECONDS",
                        help=f"seconds of silence before giving up, more than 0 and at most {_MAX_TIMEOUT:g} "
                             "(default 60)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _wants_json(argv: Sequence[str]) -> bool:
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def _read_stdin(stdin: Any) -> str:
    buffer = getattr(stdin, "buffer", None)
    data = buffer.read() if buffer is not None else stdin.read()
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _UsageError(f"stdin is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                              "convert it first, e.g. iconv -f latin1 -t utf-8") from None
    return data[1:] if data.startswith("\ufeff") else data


def _load_simulator() -> Any:
    """The FakeGloo class from fake_gloo.py beside this file (not from sys.path, so `python -I` works)."""
    folder = os.path.dirname(os.path.abspath(__file__))
    # Beside this file, or beside the file a symlink (~/bin/gloo -> .../gloo_stream.py) points to.
    paths = [os.path.join(where, "fake_gloo.py") for where in (folder, os.path.dirname(os.path.realpath(__file__)))]
    path = next((candidate for candidate in paths if os.path.isfile(candidate)), "")
    module = sys.modules.get("fake_gloo")
    if module is not None and path and os.path.abspath(getattr(module, "__file__", "") or "") == path:
        return module.FakeGloo
    if not path:
        raise ConfigurationError(
            f"--offline needs fake_gloo.py beside gloo_stream.py, and {folder} has none: copy it there from "
            "gloo-stream, or run a simulator elsewhere and point GLOO_API_URL and GLOO_TOKEN_URL at it")
    import importlib.util  # only offline

    spec = importlib.util.spec_from_file_location("fake_gloo", path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_gloo"] = module
    spec.loader.exec_module(module)
    return module.FakeGloo


def _enable_line_editing() -> None:
    try:
        import readline
    except ImportError:  # Windows, or a Python built without it: input() still works
        return
    del readline  # importing it is what gives input() line editing and this session's history


class _Run:
    """One run of the command line: its streams, options, spinner, simulator and open stream."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.out, self.err, self.stdin = sys.stdout, sys.stderr, sys.stdin
        _replace_unencodable(self.out, "replace")
        _replace_unencodable(self.err, "backslashreplace")
        self.out_tty, self.err_tty = _isatty(self.out), _isatty(self.err)
        dumb = os.environ.get("TERM") == "dumb"
        self.color = self.err_tty and not os.environ.get("NO_COLOR") and not dumb
        self.animate = self.err_tty and not dumb
        self.json = _wants_json(self.argv)
        self.args: Any = None
        self.spinner: _Spinner | None = None
        self.stream: _EventStream | None = None
        self.fake: Any = None
        self.catalog: threading.Thread | None = None  # fetching the model catalog, to price the answer
        self._memory: _History | None = None
        self.last_result: Any = None  # --chat: the last answer's result, to keep in the history
        self.safe = _SafeText()
        self.open_line = False  # answer text written without a final newline
        self.at_prompt = False  # --chat is waiting for a question
        self.json_written = False

    # -- output ------------------------------------------------------------

    def write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.open_line = not text.endswith("\n")

    def end_line(self) -> None:
        tail = self.safe.flush()
        if tail or self.open_line:
            self.write(tail + "\n")

    def note(self, text: str, *, dim: bool = False) -> None:
        """A line on stderr, made safe for a terminal; a stderr that went away is ignored."""
        text = _terminal_safe(redact(text))
        if dim and self.color:
            text = f"\033[2m{text}\033[0m"
        try:
            self.err.write(text + "\n")
            self.err.flush()
        except (OSError, ValueError):
            pass

    def print_json(self, data: Mapping[str, Any]) -> None:
        encoding = (getattr(self.out, "encoding", None) or "utf-8").lower().replace("_", "-")
        try:
            text = json.dumps(data, ensure_ascii=not encoding.startswith("utf"))
        except (TypeError, ValueError):
            text = json.dumps({"error": "the result cannot be written as JSON", "exit_code": _EXIT_ERROR})
        self.json_written = True
        self.write(text.translate(_JSON_SAFE) + "\n")

    def result_json(self, result: ChatResult | None, error: BaseException | None, exit_code: int,
                    message: str | None = None) -> dict:
        data = (result or ChatResult()).to_dict()
        if message or error is not None:
            data["error"] = redact(message or str(error))
        data["error_type"] = _error_type(error)
        # The HTTP status of an error; a Responses API result's own status ("completed", ...) stays.
        data["status"] = data.get("status") or getattr(error, "status", None)
        data["error_code"] = getattr(error, "code", None)
        data["exit_code"] = exit_code
        return data

    def stop_spinner(self) -> None:
        if self.spinner is not None:
            self.spinner.stop()

    # -- the run -------------------------------------------------------------

    def execute(self) -> int:
        parser = _build_parser()
        try:
            self.args = args = parser.parse_args(self.argv)
            question = self.question(args)
        except _UsageError as exc:
            return self.usage_error(parser, str(exc))
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else _EXIT_OK
        self.configure_logging()
        try:
            if args.list_models:
                return self.list_models(self.client(args))
            if args.history is not None or args.export is not None or args.import_file is not None:
                return self.show_history()
            self.check_responses()
            client = self.client(args)
            if args.chat:
                return self.chat(client, question)
            return self.ask(client, question or "")
        except ConfigurationError as exc:
            return self.fail(exc, _EXIT_USAGE)
        except GlooError as exc:
            return self.fail(exc, _EXIT_ERROR)
        finally:
            self.stop_spinner()
            if self.fake is not None:
                self.fake.stop()

    def usage_error(self, parser: argparse.ArgumentParser, message: str) -> int:
        if message.startswith("unrecognized arguments: -"):
            message += " (a question that starts with '-' goes after --, e.g. gloo_stream.py -- \"-x?\")"
        try:
            self.err.write(parser.format_usage())
        except (OSError, ValueError):
            pass
        self.note(f"{parser.prog}: error: {message}")
        if self.json:
            self.print_json(self.result_json(None, _UsageError(message), _EXIT_USAGE))
        return _EXIT_USAGE

    def question(self, args: Any) -> str | None:
        for flag, given in (("--list-models", args.list_models), ("--history", args.history is not None),
                            ("--export", args.export is not None), ("--import", args.import_file is not None)):
            if given:
                if args.question is not None:
                    raise _UsageError(f"{flag} takes no question" + (
                        " (give the words to look for as --history QUERY)" if flag == "--history" else ""))
                return None
        if args.chat and (args.question in (None, "-")):
            return None  # the questions come from the prompt (or stdin, line by line)
        asked = None if args.question == "-" else args.question
        piped = ""
        if self.stdin is not None and not args.chat and (asked is None or not _isatty(self.stdin)):
            if asked is None and _isatty(self.stdin):
                raise _UsageError('give a question, e.g. gloo_stream.py "Hi" (add --offline to try it without '
                                  'credentials), pipe one on stdin, or use --chat')
            piped = _read_stdin(self.stdin).strip()
        question = "\n\n".join(part for part in ((asked or "").strip(), piped) if part)
        if not question:
            raise _UsageError("the question is empty")
        return question

    def configure_logging(self) -> None:
        handler = logging.StreamHandler(self.err)
        handler.setFormatter(_SafeFormatter("%(levelname)s: %(message)s"))
        logging.basicConfig(level=logging.WARNING, handlers=[handler])

    def client(self, args: Any) -> GlooClient:
        if args.offline:
            fake_gloo = _load_simulator()
            self.fake = fake_gloo(host="127.0.0.1", port=0, delay=_OFFLINE_DELAY).start()
            self.note("[offline: answers come from the built-in simulator (fake_gloo.py), not from Gloo]", dim=True)
            return GlooClient(client_id=self.fake.client_id, client_secret=self.fake.client_secret,
                              token_url=self.fake.token_url, api_url=self.fake.api_url, endpoint=args.endpoint,
                              read_timeout=args.timeout)
        load_dotenv()
        if not have_credentials():
            raise _HintedError(_credentials_help(), hint='to try it without credentials, add --offline: '
                                     'python gloo_stream.py --offline "Hi"')
        return GlooClient(read_timeout=args.timeout, endpoint=args.endpoint)

    def options(self) -> dict[str, Any]:
        args = self.args
        options = {"model": args.model, "model_family": args.model_family, "tradition": args.tradition,
                   "temperature": args.temperature, "max_tokens": args.max_tokens,
                   "include_usage": True if args.usage else None}
        if args.publisher is not None or args.sources is not None:
            options["publisher"] = args.publisher
            options["sources_limit"] = args.sources
        return options

    @property
    def responses(self) -> bool:
        """Whether this run speaks the Responses API (--api responses, or GLOO_API=responses)."""
        api = self.args.api or (os.environ.get("GLOO_API") or "chat").strip().lower()
        if api not in ("chat", "responses"):
            raise ConfigurationError(f"GLOO_API must be chat or responses, not {api!r}")
        return api == "responses"

    def check_responses(self) -> None:
        """The Responses API's own rules, before any request is made."""
        args = self.args
        if not self.responses:
            if args.image or args.image_generation:
                raise _HintedError(f"{'--image' if args.image else '--image-generation'} needs the Responses API",
                                   hint="add --api responses --model ID")
            return
        if not args.model:
            raise _HintedError(
                "the Responses API needs --model (Gloo routes automatically only in Completions V2)",
                hint="e.g. --api responses --model gloo-openai-gpt-5-mini; Gloo's model catalog (its docs, or "
                     "GET https://platform.ai.gloo.com/platform/v2/models) lists the ids")
        chat_only = [flag for flag, value in (("--model-family", args.model_family), ("--tradition", args.tradition),
                                              ("--publisher", args.publisher), ("--sources", args.sources),
                                              ("--endpoint", args.endpoint)) if value is not None]
        if chat_only:
            raise _HintedError(f"{', '.join(chat_only)} belong to Completions V2, not the Responses API",
                               hint="drop them, or leave out --api responses")

    def response_input(self, question: str) -> ResponseInput:
        """The question, with any --image attached as a data URL."""
        if not self.args.image:
            return question
        parts: list[dict] = [{"type": "input_text", "text": question}]
        for path in self.args.image:
            parts.append({"type": "input_image", "image_url": _image_data_url(path)})
        return [{"role": "user", "content": parts}]

    def open_stream(self, client: GlooClient, message: Messages) -> Any:
        if (self.args.usage or self.responses) and self.catalog is None:  # the answer will have a usage: price it
            self.catalog = threading.Thread(target=client.model_info, args=("",), daemon=True)
            self.catalog.start()
        if self.animate and not self.args.json and not self.args.raw:
            self.spinner = _Spinner(self.err, color=self.color).start()
        if self.responses:
            args = self.args
            text = message if isinstance(message, str) else _last_user_text(message)
            self.stream = client.stream_response(
                self.response_input(text) if isinstance(message, str) else list(message),
                instructions=args.system, model=args.model, temperature=args.temperature,
                max_output_tokens=args.max_tokens,
                tools=[{"type": "image_generation"}] if args.image_generation else None)
        else:
            self.stream = client.stream(message, system=self.args.system, **self.options())
        return self.stream

    def ask(self, client: GlooClient, question: str) -> int:
        conversation = self.conversation()
        prior = self.memory.messages(conversation) if conversation is not None and self.memory else []
        message: Messages = prior + [{"role": "user", "content": question}] if prior else question
        stream = self.open_stream(client, message)
        failure: StreamError | None = None
        try:
            if self.args.raw:
                self.print_raw(stream)
            else:
                self.print_answer(stream)
        except StreamError as exc:
            failure = exc
        self.stop_spinner()
        result = stream.result()
        code, message = self.verdict(stream, result, failure)
        cost = self.cost(client, result)
        conversation = self.remember(conversation, question, result, cost)
        if self.args.json:
            self.print_json({**self.result_json(result, failure, code, message), "cost_usd": cost,
                             "conversation": conversation})
        else:
            self.end_line()
        self.print_sources(result)
        _print_stats(result, self, color=self.color, cost=cost)
        if message:
            self.note(f"error: {message}")
        return code

    def cost(self, client: GlooClient, result: Any) -> float | None:
        """The answer's cost in USD from the catalog's prices (fetched while the answer streamed), or None."""
        if self.catalog is None or not result.model or not isinstance(result.usage, dict):
            return None
        info = client.model_info(result.model)
        return info.cost(result.usage) if info is not None else None

    @property
    def memory(self) -> _History | None:
        """The history, opened on first use; None when it is off (--no-log, GLOO_LOG=0)."""
        if self._memory is None and not self.args.no_log and _history_enabled():
            self._memory = _History()
        return self._memory

    def conversation(self) -> str | None:
        """The conversation this run continues (-c, --cid), None for a new one; its system message
        is used unless --system gives another."""
        args = self.args
        if not (args.continue_ or args.cid):
            return None
        if self.memory is None:
            raise _HintedError("-c and --cid need the history, which is off", hint="drop --no-log and GLOO_LOG=0")
        conversation = self.memory.resolve(args.cid)
        if args.system is None:
            args.system = self.memory.system(conversation)
        return conversation

    def remember(self, conversation: str | None, question: str, result: Any, cost: float | None) -> str | None:
        """Keep the exchange (a new conversation when there is none); returns the conversation's id."""
        memory = self.memory
        if memory is None or (not result.text and result.error is None):
            return conversation
        if conversation is None:
            conversation = memory.new(question, self.args.system)
        memory.record(conversation, question, result, cost, self.args.system)
        return conversation

    def show_history(self) -> int:
        """--history [QUERY] (a table of conversations) or --export ID (one as JSON)."""
        memory = self.memory
        if memory is None:
            raise _HintedError("the history is off", hint="drop --no-log and GLOO_LOG=0")
        if self.args.export is not None:
            self.print_json(memory.export(memory.resolve(self.args.export)))
            return _EXIT_OK
        if self.args.import_file is not None:
            return self.import_conversation(memory, self.args.import_file)
        rows = memory.recent(self.args.history)
        if self.args.json:
            self.print_json({"conversations": [{"id": cid, "updated": int(updated * 1000), "exchanges": count,
                                                "title": title} for cid, updated, count, title in rows]})
            return _EXIT_OK
        if not rows:
            self.note("no conversation matches" if self.args.history else
                      f"no conversations yet (they are kept in {memory.path})")
            return _EXIT_OK
        for cid, updated, count, title in rows:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(updated))
            self.write(f"{cid}  {when}  {count:>3}  {_terminal_safe(title)}\n")
        return _EXIT_OK

    def import_conversation(self, memory: _History, path: str) -> int:
        try:
            if path == "-":
                data = _read_stdin(self.stdin)
            else:
                with open(path, encoding="utf-8") as handle:
                    data = handle.read()
            record = json.loads(data)
        except OSError as exc:
            raise ConfigurationError(f"--import {path}: {exc.strerror or exc}") from None
        except (ValueError, RecursionError):
            raise ConfigurationError(f"--import {path}: not JSON") from None
        conversation, count = memory.import_record(record)
        if self.args.json:
            self.print_json({"conversation": conversation, "exchanges": count, "exit_code": _EXIT_OK})
        else:
            self.note(f"imported as {conversation} ({count} exchange{'s' if count != 1 else ''}): "
                      f"continue it with --cid {conversation}")
        return _EXIT_OK

    def list_models(self, client: GlooClient) -> int:
        """--list-models: the catalog as a table (or one JSON object with --json)."""
        models = client.models()
        if self.args.json:
            self.print_json({"models": [model.to_dict() for model in models], "exit_code": _EXIT_OK})
            return _EXIT_OK
        if not models:
            self.note(f"the model catalog ({_redact_url(client.models_url)}) lists no models")
            return _EXIT_OK
        price = lambda value: "-" if value is None else f"${value:g}"  # noqa: E731
        rows = [("ID", "FAMILY", "CONTEXT", "CAPABILITIES", "PRICE IN/OUT PER 1M")] + [
            (m.id, m.family or "-", f"{m.context_window:,}" if m.context_window else "-",
             ",".join(m.capabilities) or "-", f"{price(m.input_price)} / {price(m.output_price)}") for m in models]
        widths = [max(len(_terminal_safe(row[i])) for row in rows) for i in range(4)]
        for row in rows:
            cells = [_terminal_safe(cell).ljust(width) for cell, width in zip(row, widths)]
            self.write("  ".join(cells + [_terminal_safe(row[4])]).rstrip() + "\n")
        return _EXIT_OK

    def print_answer(self, stream: Any) -> None:
        if isinstance(stream, ResponseStream):
            self.print_response(stream)
            return
        for delta in stream:
            self.stop_spinner()
            if not self.args.json:
                self.write(self.safe.feed(delta))

    def print_response(self, stream: ResponseStream) -> None:
        """Text deltas to stdout; the reasoning summary dimmed on stderr; generated images to files."""
        show_reasoning = not self.args.no_reasoning and not self.args.json
        reasoning = False
        for event in stream.events():
            kind = event.get("type")
            if kind == "response.reasoning_summary_text.delta" and show_reasoning:
                self.stop_spinner()
                delta = event.get("delta")
                if isinstance(delta, str):
                    if not reasoning:
                        self.note("[reasoning]", dim=True)
                        reasoning = True
                    self.reason(delta)
            elif kind == "response.output_text.delta":
                self.stop_spinner()
                if reasoning:
                    self.reason("\n")
                    reasoning = False
                delta = event.get("delta")
                if isinstance(delta, str) and not self.args.json:
                    self.write(self.safe.feed(delta))
            elif kind == "response.output_item.done":
                item = event.get("item")
                if isinstance(item, dict) and item.get("type") == "image_generation_call" and item.get("result"):
                    self.stop_spinner()
                    self.save_image(item)

    def reason(self, text: str) -> None:
        text = _terminal_safe(redact(text))
        if self.color:
            text = f"\033[2m{text}\033[0m"
        try:
            self.err.write(text)
            self.err.flush()
        except (OSError, ValueError):
            pass

    def save_image(self, item: dict) -> None:
        """A generated image to a file (never base64 on a terminal); its path on stderr."""
        try:
            data = base64.b64decode(str(item["result"]), validate=True)
        except (binascii.Error, ValueError):
            self.note("note: the generated image could not be decoded; it is in --json")
            return
        kind = _image_kind(data)
        if kind is None:
            self.note("note: the generated image is not a PNG, JPEG, WebP or GIF; it was not written")
            return
        name = re.sub(r"[^A-Za-z0-9_-]", "", str(item.get("id") or "")) or f"{random.getrandbits(64):016x}"
        path = os.path.join(self.args.image_dir, f"gloo-image-{name}.{kind}")
        try:
            with open(path, "xb") as handle:
                handle.write(data)
        except FileExistsError:
            self.note(f"note: {path} exists already; the generated image was not written")
            return
        except OSError as exc:
            self.note(f"note: cannot write the generated image to {path}: {exc.strerror}")
            return
        self.note(f"[image written to {path} ({len(data)} bytes)]")

    def print_raw(self, stream: ChatStream) -> None:
        """The body's bytes as received: verbatim to a pipe or file, made safe on a terminal."""
        if self.out_tty:
            decoder = codecs.getincrementaldecoder("utf-8")("replace")

            def show(data: bytes) -> None:
                self.write(self.safe.feed(decoder.decode(data)))
        else:
            self.out.flush()
            binary = getattr(self.out, "buffer", None)

            def show(data: bytes) -> None:
                if binary is None:
                    self.write(data.decode("utf-8", "replace"))
                elif data:
                    binary.write(data)
                    binary.flush()
                    self.open_line = not data.endswith(b"\n")
        _print_raw(stream, show)

    def verdict(self, stream: ChatStream, result: ChatResult, failure: StreamError | None) -> tuple[int, str]:
        """The exit code and error line, from the library's one verdict on the stream."""
        outcome = stream.outcome
        if outcome.kind == "finished":
            if outcome.finish_reason == "content_filter":
                return _EXIT_ERROR, "the answer was stopped by the content filter"
            return _EXIT_OK, ""
        if failure is not None:
            return _EXIT_ERROR, str(failure)
        return _EXIT_ERROR, outcome.message or "the stream ended before the answer finished"

    def print_sources(self, result: ChatResult) -> None:
        sources = getattr(result, "sources", None)
        if not sources or self.args.json:
            return
        self.note("Sources:", dim=True)
        for number, source in enumerate(sources, 1):
            self.note(f"  [{number}] {_describe_source(source)}")

    def fail(self, exc: GlooError, code: int) -> int:
        self.stop_spinner()
        self.end_line()
        if self.args is not None and self.args.json and not self.json_written:
            result = getattr(exc, "result", None)
            self.print_json(self.result_json(result, exc, code))
        self.note(f"error: {exc}")
        hint = getattr(exc, "hint", "")
        if hint:
            self.note(f"hint: {hint}", dim=True)
        return code

    # -- chat ----------------------------------------------------------------

    _CHAT_COMMANDS = (
        ("/help", "these commands"),
        ("/reset", "start a new conversation (the answers so far are no longer sent)"),
        ("/system TEXT", "the system message from here on (/system alone: none)"),
        ("/model ID", "the model from here on (/model alone: auto routing)"),
        ("/save [PATH]", "write this conversation as JSON (default: <id>.json here)"),
        ("/exit", "leave (also Ctrl-D)"),
    )

    def chat(self, client: GlooClient, first: str | None) -> int:
        interactive = _isatty(self.stdin)
        if interactive:
            _enable_line_editing()
            self.note("Chat: type a question and Enter. Ctrl-C stops an answer; /help lists the commands; "
                      "Ctrl-D or /exit leaves.", dim=True)
        conversation = self.conversation()
        history: list[dict] = self.memory.messages(conversation) if conversation and self.memory else []
        if history and interactive:
            self.note(f"[continuing {conversation}: {len(history) // 2} earlier exchanges]", dim=True)
        pending = first
        while True:
            if pending is not None:
                text, pending = pending, None
            else:
                line = self.read_turn(interactive)
                if line is None:
                    self.end_line()
                    return _EXIT_OK
                text = line.strip()
                if text in ("/exit", "/quit", "exit", "quit"):
                    return _EXIT_OK
                if not text:
                    continue
                if re.match(r"/[a-z]+(\s|$)", text):
                    conversation = self.chat_command(text, conversation, history)
                    continue
            history.append({"role": "user", "content": text})
            reply = self.chat_turn(client, history)
            if interactive:
                self.note("")  # a blank line between one answer and the next question
            if reply:
                history.append({"role": "assistant", "content": reply})
            else:
                history.pop()
            if self.last_result is not None:
                conversation = self.remember(conversation, text, self.last_result, None)

    def chat_command(self, text: str, conversation: str | None, history: list[dict]) -> str | None:
        """One /command of --chat; returns the conversation from here on."""
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        if name == "/help":
            width = max(len(usage) for usage, _ in self._CHAT_COMMANDS)
            for usage, what in self._CHAT_COMMANDS:
                self.note(f"  {usage.ljust(width)}  {what}")
        elif name == "/reset":
            history.clear()
            self.note("[a new conversation]", dim=True)
            return None
        elif name == "/system":
            self.args.system = rest or None
            self.note(f"[system message: {rest}]" if rest else "[no system message]", dim=True)
        elif name == "/model":
            try:
                self.args.model = _name(rest) if rest else None
            except argparse.ArgumentTypeError as exc:
                self.note(f"error: {exc}")
                return conversation
            self.args.model_family = None
            self.note(f"[model: {rest}]" if rest else "[auto routing]", dim=True)
        elif name == "/save":
            if conversation is None or self.memory is None:
                self.note("nothing to save yet" if self.memory else "the history is off (--no-log, GLOO_LOG=0)")
                return conversation
            path = rest or f"{conversation}.json"
            try:
                with open(path, "w", encoding="utf-8") as handle:
                    json.dump(self.memory.export(conversation), handle, ensure_ascii=False, indent=1)
            except OSError as exc:
                self.note(f"error: cannot write {path}: {exc.strerror or exc}")
                return conversation
            self.note(f"[saved to {path}]", dim=True)
        else:
            self.note(f"unknown command {name}: /help lists them (a question that starts with / goes after a space)")
        return conversation

    def read_turn(self, interactive: bool) -> str | None:
        if not interactive:
            data = self.stdin.buffer.readline() if hasattr(self.stdin, "buffer") else self.stdin.readline()
            if not data:
                return None
            if isinstance(data, bytes):
                data = data.decode("utf-8", "replace")
            return data
        self.at_prompt = True  # stays set if Ctrl-C ends the run here
        try:
            if self.out_tty:
                line = input("> ")
            else:
                self.err.write("> ")
                self.err.flush()
                line = input()
        except EOFError:  # Ctrl-D: leave the shell's prompt on a line of its own
            (self.out if self.out_tty else self.err).write("\n")
            line = None
        self.at_prompt = False
        return line

    def chat_turn(self, client: GlooClient, history: list[dict]) -> str:
        """One answer to the conversation so far; returns its text ('' when nothing came)."""
        stream: ChatStream | None = None
        self.safe = _SafeText()
        self.last_result = None
        try:
            stream = self.open_stream(client, history)
            failure: StreamError | None = None
            try:
                self.print_answer(stream)
            except StreamError as exc:
                failure = exc
            self.stop_spinner()
            self.end_line()
            result = self.last_result = stream.result()
            code, message = self.verdict(stream, result, failure)
            self.print_sources(result)
            _print_stats(result, self, color=self.color, cost=self.cost(client, result))
            if message:
                self.note(f"error: {message}")
            return result.text
        except KeyboardInterrupt:  # stop this answer, keep what came, and ask again
            self.stop_spinner()
            if stream is not None:
                stream.close()
            self.end_line()
            self.note("[stopped]", dim=True)
            return stream.text if stream is not None else ""
        except ConfigurationError:
            raise
        except GlooError as exc:
            self.stop_spinner()
            self.end_line()
            self.note(f"error: {exc}")
            return ""
        finally:
            self.stream = None

    # -- the ends that are not errors -------------------------------------------

    def interrupted(self) -> int:
        """Ctrl-C: keep the partial answer, say so, exit 130; a second Ctrl-C now ends the process."""
        previous = _default_sigint()
        try:
            self.stop_spinner()
            stream = self.stream
            if stream is not None:
                stream.close()
            try:
                if self.args is not None and self.args.json and not self.json_written:
                    result = stream.result() if stream is not None else None
                    self.print_json(self.result_json(result, KeyboardInterrupt(), _EXIT_INTERRUPTED, "interrupted"))
                else:
                    self.end_line()
            except OSError:  # the reader went too (Ctrl-C reaches a whole pipeline, tee included)
                _silence(self.out)
            # Through `| tee` the answer shows on the terminal but its newline may never come.
            fresh_line = self.at_prompt or (self.open_line and self.err_tty and not self.out_tty)
            self.note(("\n" if fresh_line else "") + "interrupted")
        finally:
            _restore_sigint(previous)
        return _EXIT_INTERRUPTED

    def reader_stopped(self) -> int:
        """stdout's reader went away (`| head`): stop quietly, as other Unix tools do."""
        self.stop_spinner()
        if self.stream is not None:
            self.stream.close()
        _silence(self.out)
        return _EXIT_OK


def _error_type(error: BaseException | None) -> str | None:
    """The public class name a script can test for (UsageError for a bad command line)."""
    if error is None:
        return None
    if isinstance(error, _UsageError):
        return "UsageError"
    return next(cls.__name__ for cls in type(error).__mro__ if not cls.__name__.startswith("_"))


class _SafeFormatter(logging.Formatter):
    """`warning: ...` lines like the tool's own `error: ...`, redacted and made safe for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if text.startswith(record.levelname):
            text = record.levelname.lower() + text[len(record.levelname):]
        return _terminal_safe(redact(text))


def _default_sigint() -> Any:
    import signal

    try:
        return signal.signal(signal.SIGINT, signal.SIG_DFL)
    except (ValueError, OSError):  # not the main thread
        return None


def _restore_sigint(previous: Any) -> None:
    if previous is None:
        return
    import signal

    try:
        signal.signal(signal.SIGINT, previous)
    except (ValueError, OSError, TypeError):
        pass


def _describe_source(source: Any) -> str:
    if not isinstance(source, Mapping):
        return str(source)
    title = source.get("title") or source.get("name") or "(untitled)"
    url = source.get("url") or source.get("link") or source.get("uri")
    publisher = source.get("publisher")
    text = str(title)
    if publisher and publisher != title:
        text += f" ({publisher})"
    if url:
        text += f" - {url}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """The command-line tool; returns the exit code (0 done, 1 API or stream error, 2 usage, 130 Ctrl-C)."""
    try:
        run = _Run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        return _EXIT_INTERRUPTED
    try:
        try:
            return run.execute()
        except KeyboardInterrupt:
            return run.interrupted()
        except BrokenPipeError:
            return run.reader_stopped()
    except KeyboardInterrupt:  # a Ctrl-C while the first was being handled
        return _EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away while Ctrl-C was being handled
        _silence(sys.stdout)
        return _EXIT_INTERRUPTED


def _print_raw(stream: ChatStream, show: Callable[[bytes], None]) -> None:
    """Read the stream to its end, giving `show` each body read's bytes before they are decoded."""
    stream.tap = show
    try:
        while stream.read_batch() is not None:
            pass  # read_batch folds every event into the accumulator: stream.outcome is the verdict
    finally:
        stream.close()


_IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
_MAX_IMAGE_BYTES = 20 * 1024 * 1024


def _image_kind(data: bytes) -> str | None:
    """png, jpeg, webp or gif, from the file's first bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def _image_data_url(path: str) -> str:
    """An image file as a data URL for `input_image`; a clear error for a missing, huge or non-image file."""
    try:
        size = os.path.getsize(path)
        if size > _MAX_IMAGE_BYTES:
            raise ConfigurationError(f"--image {path}: {size} bytes is more than {_MAX_IMAGE_BYTES} (20 MiB)")
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigurationError(f"--image {path}: {exc.strerror or exc}") from None
    kind = _image_kind(data)
    if kind is None:
        raise ConfigurationError(f"--image {path}: not a PNG, JPEG, WebP or GIF image")
    return f"data:{_IMAGE_TYPES[kind]};base64," + base64.b64encode(data).decode("ascii")


def _format_cost(usd: float) -> str:
    """"$0.0012", "$1.25": enough digits to say something; "< $0.000001" for less."""
    if usd == 0:
        return "$0"
    if usd < 0.000001:
        return "< $0.000001"
    if usd >= 0.01:
        return f"${usd:.2f}"
    return "$" + f"{usd:.{1 - math.floor(math.log10(usd))}f}".rstrip("0")  # two significant digits


def _print_stats(result: Any, run: Any, *, color: bool, cost: float | None = None) -> None:
    parts = [f"{result.token_count} token" + ("" if result.token_count == 1 else "s")]
    if result.ttft_ms is not None:
        parts.append(f"first token {result.ttft_ms} ms")
    parts.append(f"{result.duration_ms} ms")
    usage = result.usage if isinstance(result.usage, dict) else {}
    used = [(usage.get(a), usage.get(b)) for a, b in (("prompt_tokens", "completion_tokens"),
                                                      ("input_tokens", "output_tokens"))]
    for into, out in used:
        if isinstance(into, int) and isinstance(out, int):
            parts.append(f"usage {into} in / {out} out")
            break
    if cost is not None:
        parts.append(_format_cost(cost))
    parts.append(f"finish_reason={result.finish_reason}")
    separator = " \u00b7 " if _can_encode(run.err, "\u00b7") else " | "
    run.note("[" + separator.join(parts) + "]", dim=color)
    if result.finish_reason in ("length", "max_output_tokens"):
        run.note("note: the answer stopped at the token limit; --max-tokens allows more", dim=color)


def _can_encode(stream: Any, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _finish_output(stream: Any = None) -> None:
    """Flush stdout before the interpreter does: a reader that went away at the last moment (`| head`)
    is then neither an "Exception ignored ... BrokenPipeError" at exit nor exit status 120."""
    stream = sys.stdout if stream is None else stream
    try:
        stream.flush()
    except (BrokenPipeError, ValueError, OSError):
        _silence(stream)


def _run_script() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C is main()'s from here on
    code = main()
    _finish_output()
    # The run is over: a Ctrl-C while the interpreter shuts down must not print a traceback either.
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(_EXIT_INTERRUPTED))
    sys.exit(code)


if __name__ == "__main__":
    _run_script()
