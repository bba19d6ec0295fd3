#!/usr/bin/env python3
"""gloo_stream: stream Gloo AI chat completions token by token.

A single-file, standard-library-only client for the Gloo AI completions API (and any
OpenAI-compatible endpoint): a spec-exact Server-Sent Events decoder, a chunk
accumulator, an OAuth2 client-credentials token cache, a streaming transport with
retries before the first byte, the tutorial's functions, and a command-line tool.

    python gloo_stream.py "What is the significance of the resurrection?"

Copy this file anywhere CPython 3.9+ runs; it imports nothing outside the standard library.
"""

from __future__ import annotations

import argparse
import base64
import codecs
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
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

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
    "load_dotenv",
    # the tutorial's functions
    "ensure_valid_token",
    "handle_stream_error",
    "make_streaming_request",
    "parse_sse_line",
    "stream_completion",
    "render_stream_to_terminal",
    "main",
]

__version__ = "1.0.0"

DEFAULT_TOKEN_URL = "https://platform.ai.gloo.com/oauth2/token"
DEFAULT_API_URL = "https://platform.ai.gloo.com/ai/v2/chat/completions"
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
_USER_AGENT = "gloo-stream/" + __version__
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_ERROR_BODY_LIMIT = 64 * 1024
_READ_SIZE = 64 * 1024

log = logging.getLogger("gloo_stream")
log.addHandler(logging.NullHandler())  # a library stays quiet unless the application configures logging


# ---------------------------------------------------------------------------
# Secrets: registered values are scrubbed from every message this module builds
# ---------------------------------------------------------------------------

_secrets: Tuple[str, ...] = ()  # longest first; replaced whole, so reading it needs no lock
_secrets_lock = threading.Lock()
_secret_owners: Dict[str, int] = {}  # each live secret and how many owners registered it


def _register_secret(value: Optional[str]) -> None:
    """Scrub `value` from every message until each owner that registered it has forgotten it."""
    # Short values would scrub ordinary words; real secrets and tokens are long.
    global _secrets
    if value and len(value) >= 8:
        with _secrets_lock:
            _secret_owners[value] = _secret_owners.get(value, 0) + 1
            if value not in _secrets:
                _secrets = tuple(sorted(_secret_owners, key=len, reverse=True))


def _forget_secret(value: Optional[str]) -> None:
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


def _forget_secrets(values: List[str]) -> None:
    for value in values:
        _forget_secret(value)
    values.clear()


def redact(text: str) -> str:
    """`text` with every registered secret (client secret, token, API key) replaced by `[redacted]`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    return text


_redact = redact  # the name other modules used before it was public


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class GlooError(Exception):
    """Root of every error this module raises."""

    def __init__(self, message: str) -> None:
        super().__init__(_redact(message))

    @property
    def message(self) -> str:
        return str(self)


class ConfigurationError(GlooError):
    """Missing or invalid configuration (credentials, URLs, options)."""


class TokenError(GlooError):
    """The OAuth2 token endpoint refused, failed or answered something unusable."""

    def __init__(self, message: str, *, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


class APIStatusError(GlooError):
    """The completions endpoint answered a non-2xx status before the stream began."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: str = "",
        headers: Optional[Mapping[str, str]] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = _redact(body)
        self.headers = _redacted_headers(headers)
        self.retry_after = retry_after


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


class ServerError(APIStatusError):
    """5xx (and 408): a failure on the server's side."""


class APIConnectionError(GlooError):
    """The server could not be reached (refused, DNS, TLS, reset before any answer)."""


class APITimeoutError(APIConnectionError):
    """Connecting, or waiting for the response headers, took too long."""


class UnexpectedResponseError(GlooError):
    """A 2xx answer that is not an event stream (wrong Content-Type, HTML, JSON)."""

    def __init__(self, message: str, *, status: int, body: str = "", content_type: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = _redact(body)
        self.content_type = content_type


class StreamError(GlooError):
    """A failure after the stream began. `text` keeps the partial answer."""

    retryable = True

    def __init__(self, message: str, *, text: str = "", result: Optional["ChatResult"] = None) -> None:
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
        result: Optional["ChatResult"] = None,
        code: Any = None,
        name: str = "",
    ) -> None:
        super().__init__(message, text=text, result=result)
        self.code = code
        self.name = name


class EventTooLargeError(StreamError):
    """One event grew past the decoder's `max_event_bytes`."""

    retryable = False


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
    retry: Optional[int] = None

    def json(self) -> Any:
        """The data parsed as JSON (raises ValueError when it is not JSON)."""
        return json.loads(self.data)


class SSEDecoder:
    """Turns the bytes of an event stream into events, whatever the read boundaries.

    Two stages: bytes to complete lines (decoded as UTF-8 only once a line is whole, so a
    character split across reads is never broken), then lines to events. The cost is
    linear in the input, even for one enormous line fed in small reads.
    """

    def __init__(self, *, max_event_bytes: Optional[int] = None) -> None:
        self.max_event_bytes = max_event_bytes
        self.last_event_id = ""
        self.retry: Optional[int] = None  # the stream's reconnection time, once set
        self._undecoded = b""  # the start of a UTF-8 character split across reads
        self._at_start = True  # one leading BOM is stripped, even one split across reads
        self._pending: List[str] = []  # pieces of the current, unterminated line
        self._pending_size = 0
        self._skip_lf = False  # the previous read ended in CR: a leading LF completes CRLF
        self._event_type = ""
        self._data: List[str] = []
        self._data_size = 0
        self._block_retry: Optional[int] = None
        self._deferred: Optional[EventTooLargeError] = None

    def feed(self, data: bytes) -> List[ServerSentEvent]:
        """Decode one read; returns the events it completed (often none, sometimes many).

        Raises EventTooLargeError when an event passes `max_event_bytes`; events completed
        before it in the same read are returned first, and the error comes on the next call.
        """
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error
        events: List[ServerSentEvent] = []
        try:
            self._feed(data, events)
        except EventTooLargeError as exc:
            if not events:
                raise
            self._deferred = exc  # the same outcome whatever the read boundaries
        return events

    def _feed(self, data: bytes, events: List[ServerSentEvent]) -> None:
        if self._undecoded or self._at_start:
            data = self._take_undecoded(data)
        # Incremental UTF-8 in C: a character split across reads waits for its last byte, and
        # invalid bytes become U+FFFD (per complete line, the same as decoding line by line).
        text, used = _utf8_decode(data, "replace", False)
        if used != len(data):
            self._undecoded = data[used:]
        if self._skip_lf or "\r" in text:
            text = self._normalise_line_ends(text)
        if not text:
            return
        pending = self._pending
        if "\n" not in text:
            pending.append(text)
            self._pending_size += len(text)
            if self.max_event_bytes is not None:
                self._check_size()
            return
        if pending:
            pending.append(text)
            text = "".join(pending)
        # The common stream is `data: X` blocks: split at "\n\ndata: " (the end of one block and
        # the start of the next), and each piece with no line end inside is one event's data.
        # Anything else (comments, ids, multi-line data, event types, runs of blank lines)
        # takes the general line-by-line path. Both give exactly the events the line rules give.
        pieces = text.split("\n\ndata: ")
        last = pieces.pop()
        if not pieces:
            self._general(last, events)
            return
        limit = self.max_event_bytes
        new, cls = _new_event, ServerSentEvent
        first = pieces[0]
        # Each separator holds two line ends: no more than that (and those of the last piece)
        # means the first and middle pieces are all single-line events, the usual case.
        if (first[:6] == "data: " and text.count("\n") == 2 * len(pieces) + last.count("\n")
                and not self._data_size and not self._event_type and self._block_retry is None):
            pieces[0] = first[6:]
            if "\n" not in last:  # the read ended inside the first line of the next event
                self._pending = ["data: ", last]
                self._pending_size = len(last) + 6
                tail = None
            elif last[-2:] == "\n\n" and last.count("\n") == 2:
                pieces.append(last[:-2])
                self._pending = []
                self._pending_size = 0
                tail = None
            else:
                tail = "data: " + last
            last_id = self.last_event_id
            # An event's size is its lines with their line ends: `data: ` + data + LF here.
            if limit is not None and len(text) > limit and max(map(len, pieces)) + 7 > limit:
                fits = next(i for i, piece in enumerate(pieces) if len(piece) + 7 > limit)
                events += [new(cls, ("message", data, last_id, None)) for data in pieces[:fits]]
                self._too_large(len(pieces[fits]) + 7)
            events += [new(cls, ("message", data, last_id, None)) for data in pieces]
            if tail is not None:
                self._general(tail, events)
            elif limit is not None:
                self._check_size()
            return
        if (first[:6] == "data: " and "\n" not in first and not self._data_size and not self._event_type
                and self._block_retry is None):
            self._single_line_event(first[6:], events)
        else:
            self._process_lines(first.split("\n") + [""], events)
        for piece in pieces[1:]:
            if "\n" in piece:
                self._process_lines(("data: " + piece).split("\n") + [""], events)
            else:
                self._single_line_event(piece, events)
        if "\n" not in last:
            # The read ended inside the first line of the next event.
            self._pending = ["data: ", last]
            self._pending_size = len(last) + 6
            if limit is not None:
                self._check_size()
            return
        self._general("data: " + last, events)

    def _single_line_event(self, data: str, events: List[ServerSentEvent]) -> None:
        if self.max_event_bytes is not None and len(data) + 7 > self.max_event_bytes:
            self._too_large(len(data) + 7)
        events.append(_new_event(ServerSentEvent, ("message", data, self.last_event_id, None)))

    def _general(self, text: str, events: List[ServerSentEvent]) -> None:
        # Whole lines go through the line rules; an unterminated last line waits in `_pending`.
        cut = text.rfind("\n") + 1
        rest = text[cut:]
        self._pending = [rest] if rest else []
        self._pending_size = len(rest)
        lines = text[:cut].split("\n")
        lines.pop()  # the cut text ends with a line end, so its last piece is empty
        self._process_lines(lines, events)

    def _take_undecoded(self, data: bytes) -> bytes:
        if self._undecoded:
            data = self._undecoded + data
            self._undecoded = b""
        if self._at_start:
            if len(data) < 3 and _BOM.startswith(data):
                self._undecoded = data  # too short to tell whether it is a BOM yet
                return b""
            self._at_start = False
            if data[:3] == _BOM:
                data = data[3:]
        return data

    def _normalise_line_ends(self, text: str) -> str:
        # Only CR, LF and CRLF end a line (never str.splitlines: it also splits on \x0b, \x85, ...).
        if self._skip_lf and text:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if "\r" in text:
            # A CR that ends the read ends a line now; an LF that starts the next read belongs to it.
            self._skip_lf = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return text

    def close(self) -> List[ServerSentEvent]:
        """End of body: an unterminated last line or event is discarded, as the spec says.

        Raises an EventTooLargeError still owed from the last read.
        """
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error
        self._undecoded = b""
        self._discard_event()
        return []

    def _discard_event(self) -> None:
        self._pending = []
        self._pending_size = 0
        self._data = []
        self._data_size = 0
        self._event_type = ""
        self._block_retry = None

    @property
    def owes_error(self) -> bool:
        """True when the next feed() or close() will raise an EventTooLargeError."""
        return self._deferred is not None

    @property
    def has_partial_event(self) -> bool:
        """True while bytes of an event not yet dispatched are held."""
        return bool(self._pending or self._data or self._event_type)

    def _check_size(self) -> None:
        # The event being received: its complete lines so far plus its unterminated line. This
        # grows as bytes arrive, so every way of splitting the same bytes reaches the limit alike.
        limit = self.max_event_bytes
        if limit is not None and self._pending_size + self._data_size > limit:
            self._too_large(self._pending_size + self._data_size)

    def _too_large(self, size: int) -> None:
        self._discard_event()
        raise EventTooLargeError(f"an event exceeded the {self.max_event_bytes}-byte limit "
                                 f"({size} bytes and counting)")

    def _process_lines(self, lines: List[str], events: List[ServerSentEvent]) -> None:
        # The line rules, with state in locals written back once at the end.
        emit = events.append
        data = self._data
        limit = self.max_event_bytes
        size = self._data_size  # the current event's lines so far, with their line ends
        event_type = self._event_type
        last_id = self.last_event_id
        block_retry = self._block_retry
        for line in lines:
            if not line:
                # A blank line dispatches the event; one with no data is not dispatched,
                # but its type buffer is reset all the same.
                if limit is not None and size > limit:
                    self._too_large(size)
                if data:
                    emit(ServerSentEvent(event_type or "message", "\n".join(data), last_id, block_retry))
                    data = []
                size = 0
                event_type = ""
                block_retry = None
                continue
            size += len(line) + 1
            if line[0] == ":":
                continue  # a comment
            else:
                name, _, value = line.partition(":")
                if value[:1] == " ":
                    value = value[1:]  # only one leading space is removed
                if name == "data":
                    data.append(value)
                elif name == "event":
                    event_type = value
                elif name == "id":
                    if "\0" not in value:  # an id with NUL is ignored
                        last_id = value
                elif name == "retry":
                    if value.isdigit() and value.isascii():  # only ASCII digits
                        self.retry = block_retry = int(value)
                # any other field name is ignored
        self._data = data
        self._event_type = event_type
        self.last_event_id = last_id
        self._block_retry = block_retry
        self._data_size = size
        if limit is not None:
            self._check_size()


_BOM = b"\xef\xbb\xbf"
_utf8_decode = codecs.utf_8_decode
_new_event = tuple.__new__  # builds a ServerSentEvent without a Python-level __init__ frame


# ---------------------------------------------------------------------------
# Chat chunks and their accumulation
# ---------------------------------------------------------------------------


def _first_choice(chunk: Any) -> Optional[dict]:
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
    finish_reason: Optional[str] = None
    error_name: str = ""
    error_code: Any = None
    message: str = ""
    retryable: bool = False

    @property
    def complete(self) -> bool:
        """True when the answer is whole (it may still have been stopped by a filter or a length)."""
        return self.kind == "finished"

    def to_dict(self) -> Dict[str, Any]:
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
    ttft_ms: Optional[int] = None
    model: Optional[str] = None
    usage: Optional[dict] = None
    tool_calls: List[dict] = field(default_factory=list)
    error: Optional[str] = None
    id: Optional[str] = None
    provider: Optional[str] = None
    sources: List[dict] = field(default_factory=list)
    sources_returned: Optional[bool] = None
    model_family: Optional[str] = None
    routing_mechanism: Optional[str] = None
    routing_tier: Optional[str] = None
    routing_confidence: Optional[float] = None
    tradition: Optional[str] = None
    outcome: Optional[StreamOutcome] = None

    def to_dict(self) -> Dict[str, Any]:
        """A plain dict (the shape `stream_completion` returns)."""
        return {
            "text": self.text,
            "token_count": self.token_count,
            "duration_ms": self.duration_ms,
            "finish_reason": self.finish_reason,
            "ttft_ms": self.ttft_ms,
            "model": self.model,
            "usage": self.usage,
            "tool_calls": _copy_tool_calls(self.tool_calls),
            "error": self.error,
            "id": self.id,
            "provider": self.provider,
            "sources": [dict(source) for source in self.sources],
            "sources_returned": self.sources_returned,
            "model_family": self.model_family,
            "routing_mechanism": self.routing_mechanism,
            "routing_tier": self.routing_tier,
            "routing_confidence": self.routing_confidence,
            "tradition": self.tradition,
            "outcome": self.outcome.to_dict() if self.outcome is not None else None,
        }


_ROUTING_KEYS = ("model", "id", "provider", "model_family", "routing_mechanism", "routing_tier", "tradition")
_SOURCE_LISTS = ("citations", "sources")
_SOURCE_EVENTS = frozenset({"citations", "sources"})


class ChatAccumulator:
    """Folds a stream into one answer: content, tool calls, finish reason, usage, sources, the verdict.

    `add_event()` interprets one event (once); `add()` folds one chunk dict. Neither raises,
    whatever the data holds. `outcome()` gives the verdict so far.
    """

    def __init__(self, *, keep_text: bool = True, clock: Callable[[], float] = time.monotonic,
                 started: Optional[float] = None) -> None:
        self._clock = clock
        self.started = clock() if started is None else started
        self.first_token_at: Optional[float] = None
        self.finished_at: Optional[float] = None
        self._parts: List[str] = []
        self.keep_text = keep_text  # a relay that only counts tokens turns this off: memory stays flat
        self.token_count = 0
        self.finish_reason: Optional[str] = None
        self.done = False  # `data: [DONE]` seen
        self.model: Optional[str] = None
        self.id: Optional[str] = None
        self.provider: Optional[str] = None
        self.model_family: Optional[str] = None
        self.routing_mechanism: Optional[str] = None
        self.routing_tier: Optional[str] = None
        self.routing_confidence: Optional[float] = None
        self.tradition: Optional[str] = None
        self.usage: Optional[dict] = None
        self.sources: List[dict] = []
        self.sources_returned: Optional[bool] = None
        self.server_ttft_ms: Optional[int] = None
        self.error: Optional[dict] = None
        self.skipped_events = 0  # events whose data was not JSON
        self._tools: Dict[int, dict] = {}
        # Chunks add_event() folded that a caller may still hand to add() the old way (parse the
        # batch read_batch() returned, then add() each chunk): those are not folded twice.
        self._unclaimed: List[dict] = []

    @property
    def text(self) -> str:
        """All content so far."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def tool_calls(self) -> List[dict]:
        """Tool calls merged by index, in index order."""
        return [self._tools[index] for index in sorted(self._tools)]

    @property
    def ttft_ms(self) -> Optional[int]:
        """Milliseconds from the start to the first content token, as the client saw it."""
        if self.first_token_at is None:
            return None
        return int(round((self.first_token_at - self.started) * 1000))

    @property
    def finished(self) -> bool:
        """True once the answer can grow no more: a finish_reason, `[DONE]` or an error came."""
        return self.finish_reason is not None or self.done or self.error is not None

    def add_event(self, event: ServerSentEvent) -> Optional[dict]:
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
                self.skipped_events += 1
                log.warning("skipped an event whose data is not JSON (%d bytes)", len(data))
            return None
        if is_error:
            self._set_error(chunk.get("error", chunk) if isinstance(chunk, dict) else chunk)
        elif event.event in _SOURCE_EVENTS and isinstance(chunk, list):
            self._add_sources(chunk)  # a named event whose data is the list itself
            return None
        if not isinstance(chunk, dict):
            return None
        self._fold(chunk)
        self._unclaimed.append(chunk)
        return chunk

    def add(self, chunk: Any) -> str:
        """Fold one chunk in; returns the content it carried ("" if none)."""
        if not isinstance(chunk, dict):
            return ""
        unclaimed = self._unclaimed
        if unclaimed:
            if unclaimed[0] is chunk or unclaimed[0] == chunk:
                del unclaimed[0]
                return extract_token_content(chunk)  # add_event() folded it already
            unclaimed.clear()
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
                    if self.keep_text:
                        self._parts.append(value)
                    self.token_count += 1
                    if self.first_token_at is None:
                        self.first_token_at = self._clock()
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for call in calls:
                        self._merge_tool_call(call)
        if error is not None and error is not False and error != "":
            self.error = _error_fields(error)  # the latest error object is the one that counts
            if self.finish_reason is None:
                self.finish_reason = "error"
        return content

    def _set_confidence(self, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.routing_confidence = float(value)

    def _add_sources(self, items: List[Any]) -> None:
        for item in items:
            source = _source_fields(item)
            if source is not None:
                self.sources.append(source)
        if self.sources and self.sources_returned is None:
            self.sources_returned = True

    def _merge_tool_call(self, call: Any) -> None:
        if not isinstance(call, dict):
            return
        index = call.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool):
            return
        merged = self._tools.get(index)
        if merged is None:
            merged = self._tools[index] = {"index": index, "id": None, "type": "function",
                                           "function": {"name": None, "arguments": ""}}
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
            if isinstance(arguments, str):
                merged["function"]["arguments"] += arguments

    def outcome(self, ended: bool = False, failure: Optional[str] = None, *, error_name: str = "",
                retryable: bool = True) -> StreamOutcome:
        """The verdict so far. `ended`: the body ended (or the stream was closed); `failure`: why the
        transport failed, if it did. A finished answer stays finished whatever the transport did after.
        """
        if self.error is not None:
            error = self.error
            return StreamOutcome("provider_error", self.finish_reason or "error", str(error.get("name") or ""),
                                 error.get("code"), describe_provider_error(error), True)
        if self.finish_reason is not None or self.done:
            return StreamOutcome("finished", self.finish_reason)
        if failure is not None:
            return StreamOutcome("cut_short", None, error_name, None, redact(failure), retryable)
        if ended:
            return StreamOutcome("cut_short", None, error_name or "ConnectionLostError", None,
                                 "the stream ended before the answer finished", retryable)
        return StreamOutcome("streaming")

    def result(self, *, error: Optional[str] = None, outcome: Optional[StreamOutcome] = None) -> ChatResult:
        """A snapshot of what has been accumulated (`outcome` defaults to `self.outcome()`)."""
        end = self.finished_at if self.finished_at is not None else self._clock()
        if outcome is None:
            outcome = self.outcome()
        if error is None and self.error is not None:
            error = describe_provider_error(self.error)
        return ChatResult(
            text=self.text,
            token_count=self.token_count,
            duration_ms=int(round((end - self.started) * 1000)),
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
            model_family=self.model_family,
            routing_mechanism=self.routing_mechanism,
            routing_tier=self.routing_tier,
            routing_confidence=self.routing_confidence,
            tradition=self.tradition,
            outcome=outcome,
        )


def _copy_tool_calls(calls: List[dict]) -> List[dict]:
    """Copies deep enough that a caller changing one never changes the accumulator's."""
    return [dict(call, function=dict(call["function"])) for call in calls]


def _first_text(item: Mapping[str, Any], keys: Sequence[str]) -> Optional[str]:
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _source_fields(item: Any) -> Optional[dict]:
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
        return {
            "code": error.get("code"),
            "name": str(error.get("name") or error.get("type") or ""),
            "message": str(message or ""),
        }
    return {"code": None, "name": "", "message": "" if error is None else str(error)}


def describe_provider_error(error: Mapping[str, Any]) -> str:
    """A human line for a stream's error object: `NAME (code): message`, secrets redacted.

    Takes the accumulator's `error` or the raw object (`name`/`type`, `code`, `message`/`error`).
    """
    if not isinstance(error, Mapping):
        error = _error_fields(error)
    elif set(error) - {"code", "name", "message"}:
        error = _error_fields(dict(error))
    label = error.get("name") or "error"
    if error.get("code") is not None:
        label = f"{label} ({error['code']})"
    message = error.get("message")
    return redact(f"{label}: {message}" if message else str(label))


_describe_provider_error = describe_provider_error  # the name other modules used before it was public


# ---------------------------------------------------------------------------
# Configuration: explicit argument, then the environment, then .env
# ---------------------------------------------------------------------------


def _parse_dotenv(text: str) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[7:].lstrip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not key or not key.replace("_", "").replace(".", "").isalnum():
            continue
        value = value.strip()
        if value[:1] in ("'", '"'):
            quote = value[0]
            end = value.find(quote, 1)
            while quote == '"' and end > 0 and value[end - 1] == "\\":
                end = value.find(quote, end + 1)
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


def load_dotenv(path: Union[str, os.PathLike] = ".env", *, override: bool = False) -> Dict[str, str]:
    """Read KEY=VALUE lines from `path` into os.environ; existing variables win unless `override`.

    Handles comments, blank lines, `export ` prefixes and single or double quotes.
    Returns the values the file holds (empty when there is no file).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            values = _parse_dotenv(handle.read())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {os.fspath(path)}: {exc.__class__.__name__}") from None
    for key, value in values.items():
        if override or key not in os.environ:
            os.environ[key] = value
    return values


def _setting(explicit: Optional[str], name: str, default: Optional[str] = None) -> Optional[str]:
    if explicit is not None:
        return explicit
    value = os.environ.get(name)
    return value if value else default


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

    def __init__(self, file: Any, sock: socket.socket, *, deadline: Optional[float] = None) -> None:
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

    def read(self, n: Optional[int] = -1) -> bytes:
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
        out: List[bytes] = []
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


class _BodyReader:
    """One socket read's worth of a streaming response's body at a time (ChatStream reads through it)."""

    def __init__(self, response: "_StreamingResponse") -> None:
        self._response = response

    @property
    def eof(self) -> bool:
        return self._response.body_eof

    def read(self) -> bytes:
        """Body bytes from one socket read (b"" when only framing came); `eof` is set at the end."""
        return self._response.read_some()


_DRAIN_BYTES = 64 * 1024  # at close, read at most this much already-arrived body to find its end
_DRAIN_WAIT = 0.05  # ...waiting at most this long for the rest of a TLS record that began to arrive


def _readable(sock: socket.socket) -> bool:
    """Whether a recv would return at once (data, or the end of the connection)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True  # a broken socket: let the caller find out


class _StreamingResponse(http.client.HTTPResponse):
    """An http.client response read through a _SocketReader, which frames its own body.

    Reading the body here (not through http.client's blocking chunk reads) lets a relay poll
    the socket, and tells `close()` whether the body ended cleanly: if it did, and the server
    keeps the connection alive, the connection goes back to its pool; otherwise it is closed.
    """

    def __init__(self, sock: socket.socket, *args: Any, deadline: Optional[float] = None, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        # Nothing has been read yet, so nothing is lost by swapping the reader.
        self.fp = _SocketReader(self.fp, sock, deadline=deadline)  # type: ignore[assignment]
        self._chunks: Optional[_ChunkedDecoder] = None
        self._left: Optional[int] = None
        self._pending = b""  # decoded body bytes a sized read has not returned yet
        self.body_eof = False
        self._release: Optional[Callable[[bool], None]] = None  # set by the pool: called once at close

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
                raise http.client.HTTPException("the server sent more than its Content-Length")
            self._left -= len(raw)
            self.body_eof = self._left == 0
        return raw

    def read(self, amt: Optional[int] = None) -> bytes:
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

    def readline(self, limit: Optional[int] = -1) -> bytes:
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

    # -- the end: back to the pool, or closed ------------------------------

    def _ended_cleanly(self) -> bool:
        """Whether the body ended with nothing after it, reading only what already arrived to know."""
        reader = self.fp
        if not isinstance(reader, _SocketReader) or self.will_close or self._pending:
            return False
        try:
            budget = _DRAIN_BYTES
            while not self.body_eof and budget > 0:
                # A stream stopped at its last event usually has its final chunk in flight or here.
                if not reader.held and not _readable(reader.sock):
                    return False
                reader.sock.settimeout(_DRAIN_WAIT)
                budget -= len(self.read_some())
            return (self.body_eof and reader.held == 0 and not (self._chunks and self._chunks.extra)
                    and not _readable(reader.sock))
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def close(self) -> None:
        release, self._release = self._release, None
        clean = release is not None and self._ended_cleanly()
        super().close()
        if release is not None:
            release(clean)


class _PooledHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection that can be lent out again; its responses are _StreamingResponses."""

    headers_deadline: Optional[float] = None  # when the next response must have begun (time.monotonic)
    reader: Optional[_SocketReader] = None  # the reader of the last response begun on this connection

    def response_class(self, sock: socket.socket, *args: Any, **kwargs: Any) -> _StreamingResponse:  # type: ignore[override]
        # http.client builds each response with self.response_class(...): as a method it can
        # hand the response its deadline, which the class alone could not know.
        response = _StreamingResponse(sock, *args, deadline=self.headers_deadline, **kwargs)
        self.reader = response.fp  # type: ignore[assignment]
        return response


class _PooledHTTPSConnection(_PooledHTTPConnection, http.client.HTTPSConnection):
    """The same over TLS, with the client's one TLS context."""


_PoolKey = Tuple[str, str, str]  # scheme, host:port, proxy ("" when none)


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
        self._idle: Dict[_PoolKey, List[Tuple[float, _PooledHTTPConnection]]] = {}
        self._lock = threading.Lock()
        self.opened = 0  # connections opened, for benchmarks and tests
        self.reused = 0  # requests sent on a connection taken from the pool
        weakref.finalize(self, _close_idle, self._idle)  # a client dropped closes its idle sockets

    def take(self, key: _PoolKey) -> Optional[_PooledHTTPConnection]:
        """An idle connection to `key` that still looks alive, or None."""
        while True:
            now = self._clock()
            expired: List[_PooledHTTPConnection] = []
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
            if sock is not None and not _readable(sock):  # readable while idle: closed by the server
                with self._lock:
                    self.reused += 1
                return found
            found.close()

    def put(self, key: _PoolKey, conn: _PooledHTTPConnection) -> None:
        """Keep `conn` for the next request to `key` (or close it when the pool is full)."""
        now = self._clock()
        drop: List[_PooledHTTPConnection] = []
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

    def idle_count(self, key: Optional[_PoolKey] = None) -> int:
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


def _close_idle(idle: Dict[_PoolKey, List[Tuple[float, _PooledHTTPConnection]]]) -> None:
    for conns in list(idle.values()):
        for _, conn in conns:
            conn.close()
    idle.clear()


class _Request(urllib.request.Request):
    """A urllib request that also says how long to wait for its answer once it is sent."""

    def __init__(self, url: str, *, read_timeout: Optional[float] = None,
                 response_deadline: Optional[float] = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.read_timeout = read_timeout  # each wait for the status and headers (None: the connect timeout)
        self.response_deadline = response_deadline  # time.monotonic() by which the headers must be in


class _ResponseTimeout(socket.timeout):
    """The request was sent whole, then no answer came in time: sending it again could run it twice."""


class _StaleConnection(Exception):
    """A reused connection died before answering (the server closed it while idle)."""


def _default_ssl_context() -> Any:
    """A verifying TLS context, honouring SSL_CERT_FILE and SSL_CERT_DIR."""
    if ssl is None:
        raise ConfigurationError("this Python has no ssl module: https URLs cannot be used")
    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None,
                                      capath=os.environ.get("SSL_CERT_DIR") or None)


class _PooledHandler(urllib.request.AbstractHTTPHandler):
    """urllib.request's http and https handler, over pooled keep-alive connections.

    Proxies come from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) as urllib's own
    ProxyHandler reads them; https goes through a CONNECT tunnel, pooled like any connection.
    """

    def __init__(self, pool: _ConnectionPool, *, ssl_context: Any = None,
                 proxies: Optional[Mapping[str, str]] = None) -> None:
        super().__init__()
        self.pool = pool
        self._ssl_context = ssl_context
        self._ssl_lock = threading.Lock()
        self._proxies: Dict[str, Tuple[str, Dict[str, str]]] = {}
        for scheme, proxy in (urllib.request.getproxies() if proxies is None else proxies).items():
            if scheme in ("http", "https") and proxy:
                proxy = proxy if "://" in proxy else "http://" + proxy
                self._proxies[scheme] = (proxy, _proxy_auth(urllib.parse.urlsplit(proxy)))

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

    def _proxy(self, scheme: str, host: str) -> Tuple[str, Dict[str, str]]:
        proxy = self._proxies.get(scheme)
        if proxy is None or urllib.request.proxy_bypass(host):
            return "", {}
        return proxy

    def _connect(self, scheme: str, host: str, proxy: str, proxy_headers: Dict[str, str],
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
                  headers: Dict[str, str], key: _PoolKey, *, reused: bool) -> _StreamingResponse:
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
        except (ConnectionError, http.client.BadStatusLine):
            received = conn.reader.received if conn.reader is not None else 0
            conn.close()
            if reused and not received:
                raise _StaleConnection() from None
            raise
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


def _proxy_auth(parts: urllib.parse.SplitResult) -> Dict[str, str]:
    if parts.username is None:
        return {}
    user_pass = "%s:%s" % (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
    _register_secret(user_pass)
    return {"Proxy-Authorization": "Basic " + base64.b64encode(user_pass.encode("utf-8")).decode("ascii")}


def _build_opener(*, pool: Optional[_ConnectionPool] = None, ssl_context: Any = None) -> urllib.request.OpenerDirector:
    """An opener with the pooled handler and no redirect handler: a 3xx is an HTTPError, never followed.

    Following a redirect would send the bearer token or the client secret to wherever the
    Location points, over plain http even; callers turn a 3xx into a typed error instead.
    """
    opener = urllib.request.OpenerDirector()
    for handler in (_PooledHandler(pool if pool is not None else _ConnectionPool(), ssl_context=ssl_context),
                    urllib.request.UnknownHandler(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


# ---------------------------------------------------------------------------
# Transport checks: credentials and URLs refused or redacted, headers in any case, statuses to errors
# ---------------------------------------------------------------------------


def _describe_os_error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        exc = reason
    elif isinstance(reason, str):
        return _redact(reason)
    if isinstance(exc, socket.timeout):
        return "timed out"
    text = str(exc) or exc.__class__.__name__
    return _redact(text)


def _is_timeout(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", None)
    return isinstance(exc, socket.timeout) or isinstance(reason, socket.timeout) or "timed out" in str(reason or "")


def _has_control(value: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in value)


def _credential(value: Optional[str], name: str, error: type = ConfigurationError) -> Optional[str]:
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
    return value


def _redact_url(url: str) -> str:
    """`url` with any user:password@ replaced, and registered secrets scrubbed."""
    try:
        parts = urllib.parse.urlsplit(url)
        if "@" in parts.netloc:
            url = urllib.parse.urlunsplit(parts._replace(netloc="[redacted]@" + parts.netloc.rpartition("@")[2]))
    except ValueError:
        return "[a URL that does not parse]"
    return _redact(url)


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


def _redacted_headers(headers: Optional[Mapping[str, str]]) -> _Headers:
    """Header values with registered secrets and any URL's user:password@ scrubbed (Location, Link...)."""
    items = headers.items() if headers is not None else ()
    return _Headers((str(name), _URL_USERINFO.sub(r"\1[redacted]@", _redact(str(value)))) for name, value in items)


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

    def gettimeout(self) -> Optional[float]:
        return self._sock.gettimeout()

    def settimeout(self, timeout: Optional[float]) -> None:
        if self._lent():
            self._sock.settimeout(timeout)

    def shutdown(self, how: int) -> None:
        if self._lent():
            self._sock.shutdown(how)

    def pending(self) -> int:
        pending = getattr(self._sock, "pending", None)
        return pending() if pending is not None and self._lent() else 0


def _response_socket(response: Any) -> Optional[_LentSocket]:
    """The socket under an http.client response, to poll it or shut it down from another thread."""
    fp = getattr(response, "fp", None)
    return _LentSocket(response, fp.sock) if isinstance(fp, _SocketReader) else None


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


def _seconds(value: float) -> Optional[float]:
    if math.isnan(value):
        return None
    return min(max(0.0, value), _MAX_RETRY_AFTER)  # inf and 1e400 (which float() reads as inf) capped


def _parse_retry_after(headers: Mapping[str, str], *, now: Callable[[], float] = time.time) -> Optional[float]:
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


def _status_error(status: int, body: str = "", headers: Optional[Mapping[str, str]] = None) -> APIStatusError:
    headers = _Headers(headers or {})
    if 300 <= status < 400:
        location = _header(headers, "Location")
        where = f" to {_redact_url(location)[:300]}" if location else ""
        return RedirectError(
            f"the completions endpoint redirected ({status}){where}; redirects are not followed, so the "
            "bearer token never travels elsewhere: set GLOO_API_URL to the final address",
            status=status, body=body, headers=headers, location=_redact_url(location) if location else None,
        )
    cls = _STATUS_ERRORS.get(status) or (ServerError if status >= 500 else APIStatusError)
    return cls(
        _status_message(status, _redact(body)),
        status=status,
        body=body,
        headers=headers,
        retry_after=_parse_retry_after(headers),
    )


class RedirectError(APIStatusError):
    """3xx: the endpoint answered a redirect, which is never followed (it would carry the credentials).

    `location` is where it pointed (credentials in it redacted); `status` the 3xx code.
    """

    def __init__(self, message: str, *, location: Optional[str] = None, **fields: Any) -> None:
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
        opener: Optional[urllib.request.OpenerDirector] = None,
    ) -> None:
        client_id = _credential(client_id, "GLOO_CLIENT_ID") or ""
        client_secret = _credential(client_secret, "GLOO_CLIENT_SECRET") or ""
        if not client_id or not client_secret:
            raise ConfigurationError(
                "missing Gloo credentials: set GLOO_CLIENT_ID and GLOO_CLIENT_SECRET in the environment or in .env"
            )
        self.token_url = _check_url(token_url, "GLOO_TOKEN_URL")
        # The secret and the tokens in use are scrubbed from messages; forgotten when this cache goes.
        self._live_secrets: List[str] = []
        self._remember(client_secret)
        weakref.finalize(self, _forget_secrets, self._live_secrets)
        self.client_id = client_id
        self._client_secret = client_secret
        self.timeout = timeout
        self._clock = clock
        self._opener = opener or _build_opener()
        self._lock = threading.Lock()
        self._token: Optional[str] = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._attempts = 0
        self._last_failure: Optional[TokenError] = None
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
        ticket = self._attempts
        with self._lock:
            now = self._clock()
            token = self._token
            if token is not None and now < self._refresh_at:
                return token
            valid = token is not None and now < self._expires_at
            failure = self._last_failure
            if failure is not None and self._attempts != ticket:
                if valid:
                    assert token is not None
                    return token
                raise TokenError(str(failure), status=failure.status)
            self._attempts += 1
            try:
                self._fetch()
            except TokenError as exc:
                self._last_failure = exc
                if not valid:
                    raise
                assert token is not None
                left = self._expires_at - now
                self._refresh_at = now + min(self.refresh_retry_seconds, left / 2)
                log.warning("token refresh failed (%s); the current token stays in use (%.0fs left), "
                            "next try in %.0fs", exc, left, self._refresh_at - now)
                return token
            self._last_failure = None
            assert self._token is not None
            return self._token

    def invalidate(self, token: Optional[str] = None) -> None:
        """Forget the cached token (only if it is still `token`, when given)."""
        with self._lock:
            if token is None or token == self._token:
                self._token = None

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
                f"token request failed ({exc.code}){hint}: {_redact(body)[:200]}", status=exc.code
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


def _as_messages(message: Messages, system: Optional[str] = None) -> List[dict]:
    if isinstance(message, str):
        messages: List[dict] = [{"role": "user", "content": message}]
    elif isinstance(message, Sequence) and message and all(isinstance(m, Mapping) for m in message):
        messages = [dict(m) for m in message]
    else:
        raise ConfigurationError("message must be a string or a non-empty list of chat messages")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return messages


class GlooClient:
    """A configured connection to the completions API.

    Credentials come from the arguments, else GLOO_CLIENT_ID / GLOO_CLIENT_SECRET (or a static
    GLOO_API_KEY for OpenAI-compatible servers); URLs from GLOO_TOKEN_URL / GLOO_API_URL.
    Safe to share between threads.
    """

    def __init__(
        self,
        *,
        client_id: Optional[str] = None,
        client_secret: Optional[str] = None,
        api_key: Optional[str] = None,
        token_url: Optional[str] = None,
        api_url: Optional[str] = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        deadline: Optional[float] = None,
        max_retries: int = 2,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_wait: float = 30.0,
        max_event_bytes: Optional[int] = DEFAULT_MAX_EVENT_BYTES,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        token_cache: Optional[TokenCache] = None,
        retry_rate_limited: bool = True,
        retry_timeouts: bool = False,
        ssl_context: Any = None,
        pool_size: int = 16,
        pool_idle_timeout: float = 30.0,
    ) -> None:
        self.api_url = _check_url(_setting(api_url, "GLOO_API_URL", DEFAULT_API_URL) or DEFAULT_API_URL,
                                  "GLOO_API_URL")
        self.token_url = _check_url(_setting(token_url, "GLOO_TOKEN_URL", DEFAULT_TOKEN_URL) or DEFAULT_TOKEN_URL,
                                    "GLOO_TOKEN_URL")
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
        self._opener = _build_opener(pool=self.pool, ssl_context=ssl_context)
        # Explicit OAuth credentials win over a GLOO_API_KEY left in the environment.
        explicit_oauth = client_id is not None and client_secret is not None
        self._api_key = _credential(api_key, "api_key") if api_key is not None else (
            None if explicit_oauth else _credential(_setting(None, "GLOO_API_KEY"), "GLOO_API_KEY"))
        if self._api_key:
            _register_secret(self._api_key)
            weakref.finalize(self, _forget_secret, self._api_key)
        if token_cache is not None:
            self.tokens: Optional[TokenCache] = token_cache
        elif self._api_key:
            self.tokens = None
        else:
            cid = _credential(_setting(client_id, "GLOO_CLIENT_ID"), "GLOO_CLIENT_ID")
            secret = _credential(_setting(client_secret, "GLOO_CLIENT_SECRET"), "GLOO_CLIENT_SECRET")
            if not cid or not secret:
                raise ConfigurationError(
                    "missing Gloo credentials: set GLOO_CLIENT_ID and GLOO_CLIENT_SECRET "
                    "in the environment or in .env (or GLOO_API_KEY for an OpenAI-compatible server)"
                )
            self.tokens = TokenCache(
                client_id=cid, client_secret=secret, token_url=self.token_url,
                timeout=connect_timeout, clock=clock, opener=self._opener,
            )

    def close(self) -> None:
        """Close the idle pooled connections (streams still open keep theirs until they end)."""
        self.pool.clear()

    def __enter__(self) -> "GlooClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GlooClient(api_url={self.api_url!r}, auth={'api_key' if self.tokens is None else 'oauth'})"

    # -- requests ---------------------------------------------------------

    def token(self) -> str:
        """The bearer credential: a cached OAuth token, or the static API key."""
        if self.tokens is None:
            assert self._api_key is not None
            return self._api_key
        return self.tokens.get()

    def build_payload(self, message: Messages, *, system: Optional[str] = None, stream: bool = True,
                      **options: Any) -> dict:
        """The JSON body for `message` (string or chat messages) and completion options.

        Auto routing is used unless `model`, `model_family` or `auto_routing` is given;
        options whose value is None are left out.
        """
        payload: dict = {"messages": _as_messages(message, system)}
        payload.update({key: value for key, value in options.items() if value is not None})
        if not any(key in payload for key in ("auto_routing", "model", "model_family")):
            payload["auto_routing"] = True
        payload["stream"] = stream
        return payload

    def open(self, payload: Mapping[str, Any], *, token: Optional[str] = None, url: Optional[str] = None) -> Any:
        """POST `payload` (to `url`, else `api_url`) and return the open response once its status is 200.

        Retries happen here, before the first byte of the body: a 401 refreshes the token
        once; 408/429/5xx and connection failures back off and retry up to `max_retries`
        (never sooner than a Retry-After asks; a 429 not at all with `retry_rate_limited=False`).
        A request sent whole and then unanswered in time is not sent again unless
        `retry_timeouts`; a redirect is a RedirectError, never followed.
        """
        body = _encode_payload(payload)
        target = _check_url(url, "url") if url is not None else self.api_url
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
                if (status in _RETRYABLE_STATUSES and attempt < self.max_retries
                        and (status != 429 or self.retry_rate_limited)):
                    wait = self._backoff(attempt, error.retry_after)
                    if wait is not None and self._within_deadline(started, wait):
                        log.info("completions answered %d; retry %d in %.2fs", status, attempt + 1, wait)
                        self._sleep(wait)
                        attempt += 1
                        continue
                raise error from None
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
                    f"{_redact(data.decode('utf-8', 'replace'))[:200]}",
                    status=response.status,
                    body=data.decode("utf-8", "replace"),
                    content_type=content_type,
                )
            sock = _response_socket(response)
            if sock is not None:
                sock.settimeout(self.read_timeout)
        if isinstance(getattr(response, "fp", None), _SocketReader):
            response.fp.deadline = None  # the body has its own idle timeout and deadline
        return response

    def _backoff(self, attempt: int, retry_after: Optional[float]) -> Optional[float]:
        """Seconds to wait before retry `attempt` + 1, or None when the server asks for too long."""
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_wait else None
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return ceiling * (0.5 + random.random() / 2)  # jitter: spread the herd

    def _within_deadline(self, started: float, wait: float) -> bool:
        return self.deadline is None or (self._clock() - started) + wait < self.deadline

    def stream(self, message: Messages, *, system: Optional[str] = None, token: Optional[str] = None,
               **options: Any) -> "ChatStream":
        """Start a streamed completion; iterate the returned ChatStream for text deltas."""
        payload = self.build_payload(message, system=system, stream=True, **options)
        return self.stream_payload(payload, token=token)

    def stream_payload(self, payload: Mapping[str, Any], *, token: Optional[str] = None) -> "ChatStream":
        """Start a streamed completion from a ready JSON body (`stream` is forced on)."""
        payload = dict(payload)
        payload["stream"] = True
        started = self._clock()
        response = self.open(payload, token=token)
        return ChatStream(response, clock=self._clock, started=started, read_timeout=self.read_timeout,
                          deadline=self.deadline, max_event_bytes=self.max_event_bytes)

    def complete(self, message: Messages, *, on_delta: Optional[Callable[[str], None]] = None,
                 system: Optional[str] = None, token: Optional[str] = None, **options: Any) -> ChatResult:
        """Stream a completion to the end and return its ChatResult.

        Failures before the stream raise; failures during it are recorded in `result.error`
        with the partial text kept.
        """
        with self.stream(message, system=system, token=token, **options) as stream:
            try:
                for delta in stream:
                    if on_delta is not None:
                        on_delta(delta)
            except StreamError as exc:
                return exc.result or stream.result()
            return stream.result()


class ChatStream:
    """An open completion stream.

    Iterate it for text deltas, or use `chunks()` for the chunk dicts, `events()` for the raw
    events, `event_batches()` / `read_batch()` for the events of each network read. Every way of
    reading folds the events into `accumulator` once, so `outcome` is the one verdict on the
    stream and `result()` the ChatResult so far. Mid-stream failures raise a StreamError carrying
    the partial text; a finished answer never becomes an error. Stopping early (break, close, an
    exception, Ctrl-C) closes the connection at once.
    """

    finish_grace = 2.0  # seconds to wait after a finish for a usage chunk or [DONE]

    def __init__(self, response: Any, *, clock: Callable[[], float] = time.monotonic,
                 started: Optional[float] = None, read_timeout: Optional[float] = 60.0,
                 deadline: Optional[float] = None, max_event_bytes: Optional[int] = DEFAULT_MAX_EVENT_BYTES,
                 finish_grace: Optional[float] = None, keep_text: bool = True) -> None:
        self.response = response
        self.status = getattr(response, "status", 200)
        self.headers = dict(response.headers.items()) if getattr(response, "headers", None) else {}
        self._clock = clock
        self.accumulator = ChatAccumulator(keep_text=keep_text, clock=clock, started=started)
        self.read_timeout = read_timeout
        self.deadline = deadline
        if finish_grace is not None:
            self.finish_grace = finish_grace
        self.tap: Optional[Callable[[bytes], None]] = None  # sees each body read's bytes before decoding
        self._decoder = SSEDecoder(max_event_bytes=max_event_bytes)
        self._sock = _response_socket(response)
        fp = getattr(response, "fp", None)
        self._body = _BodyReader(response) if isinstance(fp, _SocketReader) else None
        self._eof = False
        self._closed = False
        self._finished_at: Optional[float] = None  # when the accumulator first said finished
        self._consumed = False
        self.error: Optional[StreamError] = None
        self.bytes_read = 0

    # -- lifecycle --------------------------------------------------------

    def __enter__(self) -> "ChatStream":
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
        try:
            self.response.close()
        except (OSError, http.client.HTTPException):
            pass

    def abort(self) -> None:
        """Cut the connection from any thread: a read blocked in another thread returns at once."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

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
        return self.accumulator.outcome(ended=self._closed)

    def grace_remaining(self) -> Optional[float]:
        """Seconds left of the finish grace (0 when it is over), or None before the answer finished."""
        if self._finished_at is None:
            return None
        return max(0.0, self.finish_grace - (self._clock() - self._finished_at))

    # -- reading ----------------------------------------------------------

    def _read(self, grace: Optional[float] = None) -> bytes:
        if self._sock is not None and (self.deadline is not None or grace is not None):
            limits = [t for t in (self.read_timeout, grace) if t is not None]
            if self.deadline is not None:
                remaining = self.deadline - (self._clock() - self.accumulator.started)
                if remaining <= 0:
                    raise socket.timeout("deadline")
                limits.append(remaining)
            self._sock.settimeout(max(0.001, min(limits)))
        if self._body is not None:
            return self._body.read()
        read1 = getattr(self.response, "read1", None)
        data = read1(_READ_SIZE) if read1 is not None else self.response.read(_READ_SIZE)
        self._eof = not data
        return data

    def fileno(self) -> int:
        """The connection's file descriptor, to wait on it with select/poll."""
        if self._sock is None:
            raise GlooError("this stream has no socket to wait on")
        return self._sock.fileno()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded: read them before waiting on the socket."""
        fp = getattr(self.response, "fp", None)
        return fp.buffered if isinstance(fp, _SocketReader) else 0

    def read_batch(self) -> Optional[List[ServerSentEvent]]:
        """One network read's worth of events (possibly none), folded into `accumulator`; None at the end.

        After a finish it waits at most `finish_grace` seconds for more (usage, `[DONE]`), then
        ends cleanly. Before a finish, raises ConnectionLostError or StreamTimeoutError on a
        transport failure, and EventTooLargeError when one event passes `max_event_bytes`.
        """
        batch = self._next_batch()
        return None if batch is None else batch[0]

    def _next_batch(self) -> Optional[Tuple[List[ServerSentEvent], List[dict]]]:
        accumulator = self.accumulator
        if self._closed or self._eof or accumulator.done:
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
                raise self._fail(StreamTimeoutError, f"no data from the server for {self.read_timeout:g}s") from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._closed or self._finished_at is not None:
                    self.close()
                    return None
                raise self._fail(ConnectionLostError,
                                 f"connection lost mid-stream: {_describe_os_error(exc)}") from None
            if self._body is not None and self._body.eof:
                self._eof = True
            if not data:
                if self._eof:
                    self._end_of_body()
                    return None
                return [], []  # only transfer framing arrived
            self.bytes_read += len(data)
            if self.tap is not None:
                self.tap(data)
            events = self._feed(data)
        except EventTooLargeError:
            if self._finished_at is None:
                raise
            self.error = None  # the answer was whole before the oversized event: it stays whole
            self.close()
            return None
        return self._fold(events)

    def _fold(self, events: List[ServerSentEvent]) -> Tuple[List[ServerSentEvent], List[dict]]:
        accumulator = self.accumulator
        accumulator._unclaimed.clear()
        chunks: List[dict] = []
        for position, event in enumerate(events):
            chunk = accumulator.add_event(event)
            if chunk is not None:
                chunks.append(chunk)
            if accumulator.done:
                del events[position + 1:]  # nothing after [DONE] belongs to the answer
                break
        if self._finished_at is None and accumulator.finished:
            self._finished_at = self._clock()
        return events, chunks

    def _feed(self, data: bytes) -> List[ServerSentEvent]:
        try:
            return self._decoder.feed(data)
        except EventTooLargeError as exc:
            raise self._fail(EventTooLargeError, str(exc)) from None

    def _end_of_body(self) -> None:
        try:
            if not self._closed:
                self._decoder.close()
        except EventTooLargeError as exc:
            if self._finished_at is None:
                raise self._fail(EventTooLargeError, str(exc)) from None
        finally:
            self.close()

    def _claim(self) -> None:
        if self._consumed:
            raise GlooError("a ChatStream can be read only once")
        self._consumed = True

    def event_batches(self) -> Iterator[List[ServerSentEvent]]:
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

    def events(self) -> Iterator[ServerSentEvent]:
        """Every event, one at a time."""
        for batch in self.event_batches():
            yield from batch

    def chunks(self) -> Iterator[dict]:
        """The chunk dicts, read to `data: [DONE]`, the end of the body, or the end of the finish grace.

        At the end, raises ProviderError for a structured error, ConnectionLostError when the
        body ended before any finish_reason.
        """
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

    def __iter__(self) -> Iterator[str]:
        """Text deltas as they arrive."""
        for chunk in self.chunks():
            content = extract_token_content(chunk)
            if content:
                yield content

    def _fail(self, cls: type, message: str, **fields: Any) -> StreamError:
        self.close()
        error = cls(message, **fields)
        self.error = error
        result = self.result()
        error.text, error.result = result.text, result
        return error

    def result(self) -> ChatResult:
        """What has been received so far (the whole answer once reading ends), with the verdict."""
        outcome = self.outcome
        error = outcome.message if outcome.kind in ("provider_error", "cut_short") else None
        return self.accumulator.result(error=error, outcome=outcome)

    @property
    def text(self) -> str:
        return self.accumulator.text


# ---------------------------------------------------------------------------
# The tutorial's functions (same names and behaviour, so tutorial code runs unchanged)
# ---------------------------------------------------------------------------

_default_lock = threading.Lock()
_default_client: Optional[GlooClient] = None


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
    raise _status_error(int(status_code), response_body or "")


def make_streaming_request(message: Messages, token: Optional[str] = None, **options: Any) -> Any:
    """Open the streaming POST and return the response once its status is 200 (else raise)."""
    client = _client()
    return client.open(client.build_payload(message, stream=True, **options), token=token)


def parse_sse_line(line: Union[str, bytes]) -> Union[None, str, dict]:
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


def stream_completion(message: Messages, token: Optional[str] = None, **options: Any) -> Dict[str, Any]:
    """Stream a completion to the end; returns text, token_count, duration_ms, finish_reason, ...

    Failures before the stream raise; a mid-stream failure keeps the partial text and sets `error`.
    """
    on_delta = options.pop("on_delta", None)
    return _client().complete(message, token=token, on_delta=on_delta, **options).to_dict()


def render_stream_to_terminal(message: Messages, token: Optional[str] = None, *, file: Any = None,
                              **options: Any) -> Dict[str, Any]:
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
# Command line
# ---------------------------------------------------------------------------

_EXIT_OK, _EXIT_ERROR, _EXIT_USAGE, _EXIT_INTERRUPTED = 0, 1, 2, 130


class _Spinner:
    """A small waiting indicator on stderr until the first token (terminals only)."""

    _FRAMES = "|/-\\"

    def __init__(self, stream: Any, *, color: bool) -> None:
        self._stream = stream
        self._color = color
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gloo-spinner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            mark = self._FRAMES[frame % len(self._FRAMES)]
            text = f"{mark} waiting for the first token…"
            if self._color:
                text = f"\033[2m{text}\033[0m"
            self._stream.write("\r" + text)
            self._stream.flush()
            frame += 1

    def stop(self) -> None:
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._stream.write("\r\033[K")
        self._stream.flush()


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gloo_stream.py",
        description="Stream a Gloo AI chat completion to stdout, token by token.",
        epilog=(
            "Credentials: GLOO_CLIENT_ID and GLOO_CLIENT_SECRET (environment or .env), or GLOO_API_KEY for an "
            "OpenAI-compatible server; GLOO_API_URL and GLOO_TOKEN_URL point elsewhere. "
            "Exit codes: 0 done, 1 API or stream error, 2 usage or configuration error, 130 interrupted."
        ),
    )
    parser.add_argument("question", nargs="?", default=None, help="the question; read from stdin when absent or '-'")
    parser.add_argument("--system", help="a system message sent before the question")
    routing = parser.add_mutually_exclusive_group()
    routing.add_argument("--model", help="a specific model (default: auto routing)")
    routing.add_argument("--model-family", choices=["openai", "anthropic", "google", "open source"],
                         help="let Gloo pick a model of this family")
    parser.add_argument("--tradition", choices=["evangelical", "catholic", "mainline", "not_faith_specific"],
                        help="the theological perspective of the answer")
    parser.add_argument("--temperature", type=float, help="sampling temperature, 0 to 2")
    parser.add_argument("--max-tokens", type=int, help="the most tokens to generate (at least 1)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the final result as one JSON object")
    output.add_argument("--raw", action="store_true", help="print the raw event stream as received (for debugging)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds of silence before giving up (default 60)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command-line tool; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    err = sys.stderr
    color = err.isatty() and not os.environ.get("NO_COLOR")
    if args.temperature is not None and not 0 <= args.temperature <= 2:
        parser.error("--temperature must be between 0 and 2")
    if args.max_tokens is not None and args.max_tokens < 1:
        parser.error("--max-tokens must be at least 1")
    question = args.question
    if question is None or question == "-":
        if sys.stdin is None or (question is None and sys.stdin.isatty()):
            parser.error("give a question, or pipe one on stdin")
        question = sys.stdin.read().strip()
    if not question:
        parser.error("the question is empty")
    logging.basicConfig(level=logging.WARNING, format="gloo_stream: %(message)s")
    spinner: Optional[_Spinner] = None
    stream: Optional[ChatStream] = None
    out = sys.stdout
    try:
        load_dotenv()
        client = GlooClient(read_timeout=args.timeout)
        options = {"model": args.model, "model_family": args.model_family, "tradition": args.tradition,
                   "temperature": args.temperature, "max_tokens": args.max_tokens}
        if err.isatty() and not args.json and not args.raw:
            spinner = _Spinner(err, color=bool(color))
            spinner.start()
        stream = client.stream(question, system=args.system, **options)
        failure: Optional[StreamError] = None
        if args.raw:
            try:
                if not _print_raw(stream, out) and stream.accumulator.finish_reason is None:
                    failure = ConnectionLostError("the stream ended before the answer finished")
            except StreamError as exc:
                failure = exc
        else:
            try:
                for delta in stream:
                    if spinner is not None:
                        spinner.stop()
                    if not args.json:
                        out.write(delta)
                        out.flush()
            except StreamError as exc:
                failure = exc
        if spinner is not None:
            spinner.stop()
        result = stream.result()
        if args.json:
            json.dump(result.to_dict(), out, ensure_ascii=False)
            out.write("\n")
        elif not args.raw and result.text and not result.text.endswith("\n"):
            out.write("\n")
        out.flush()
        _print_stats(result, err, color=bool(color))
        if failure is not None:
            print(f"error: {failure}", file=err)
            return _EXIT_ERROR
        if result.finish_reason == "content_filter":
            print("error: the answer was stopped by the content filter", file=err)
            return _EXIT_ERROR
        return _EXIT_OK
    except KeyboardInterrupt:
        if spinner is not None:
            spinner.stop()
        if stream is not None:
            stream.close()
        out.write("\n")
        print("interrupted", file=err)
        return _EXIT_INTERRUPTED
    except ConfigurationError as exc:
        if spinner is not None:
            spinner.stop()
        print(f"error: {exc}", file=err)
        return _EXIT_USAGE
    except GlooError as exc:
        if spinner is not None:
            spinner.stop()
        print(f"error: {exc}", file=err)
        return _EXIT_ERROR


def _print_raw(stream: ChatStream, out: Any) -> bool:
    """Print each event in wire form as it arrives; True if `data: [DONE]` came."""
    done = False
    binary = getattr(out, "buffer", None)
    for batch in stream.event_batches():
        for event in batch:
            text = _format_event(event)
            if binary is not None:
                binary.write(text.encode("utf-8"))
                binary.flush()
            else:
                out.write(text)
                out.flush()
            if event.data == "[DONE]":
                done = True
                continue
            try:
                stream.accumulator.add(json.loads(event.data))
            except (ValueError, RecursionError):
                pass
    return done


def _format_event(event: ServerSentEvent) -> str:
    lines = []
    if event.event != "message":
        lines.append(f"event: {event.event}")
    if event.id:
        lines.append(f"id: {event.id}")
    lines.extend("data: " + line for line in event.data.split("\n"))
    return "\n".join(lines) + "\n\n"


def _print_stats(result: ChatResult, err: Any, *, color: bool) -> None:
    parts = [f"{result.token_count} tokens"]
    if result.ttft_ms is not None:
        parts.append(f"first token {result.ttft_ms} ms")
    parts.append(f"{result.duration_ms} ms")
    parts.append(f"finish_reason={result.finish_reason}")
    line = "[" + " · ".join(parts) + "]"
    if color:
        line = f"\033[2m{line}\033[0m"
    print(line, file=err, flush=True)


if __name__ == "__main__":
    sys.exit(main())
