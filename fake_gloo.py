#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""fake_gloo: a local simulator of the Gloo AI API (OAuth tokens and chat completions).

Used by `python demo.py` without credentials, by `proxy_server.py --offline`, by the tests
and by the benchmarks. Standard library only; imports nothing of the project.

    with FakeGloo(delay=0.0) as fake:          # 127.0.0.1 on a port from the OS
        os.environ.update(fake.env)            # GLOO_CLIENT_ID, ..._SECRET, ..._TOKEN_URL, ..._API_URL

    python fake_gloo.py --port 3002            # in the foreground; prints the `export` lines

Endpoints: POST /oauth2/token (form or HTTP Basic credentials), GET /platform/v2/models (the model
catalog, public: ids, families, context windows, capabilities, prices), POST /ai/v2/chat/completions,
POST /ai/v2/chat/completions/grounded (`rag_publisher`, `sources_limit`; citations as the first
event) and POST /ai/v2/guarded/chat/completions (a Studio API key or a token), streaming or not; and
POST /ai/v1/responses, the Responses API: typed events numbered by `sequence_number`, function calls
of the request's own tools (honouring `tool_choice`, arguments built from each tool's JSON schema)
and a text answer that uses a `function_call_output`, reasoning summaries for reasoning models,
`input_image` data URLs seen (their size in the answer), an `image_generation` tool that returns a
small real PNG, `max_output_tokens` giving `response.incomplete`; [[error]] is `response.failed`,
[[error_event]] an `error` event, [[drop]] a drop, [[content_filter]] an incomplete answer.

As strict as Gloo: FastAPI-style 422 `{"detail": [{"type", "loc", "msg", "input"}]}` for bad enums,
ranges and types; exactly one of auto_routing / model / model_family; unknown model ids 400;
other errors `{"error": "<text>", "code": "<text>"}`; error chunks carry Gloo's internal codes
(2001 PROVIDER_TIMEOUT); usage only with `stream_options: {"include_usage": true}`; every chunk
carries the routing metadata (model_family, routing_mechanism, routing_tier, routing_confidence).

Scenario markers go in the last user message (or in FakeGloo(scenario=...) for every request);
they combine, and an unknown `[[name]]` is left alone as ordinary text:

    [[slow:S]]              S seconds before each content token (instead of `delay`)
    [[status:N]]            answer status N with a JSON error; 429 and 503 carry Retry-After: 1,
    [[status:N:retry=R]]      429 also X-RateLimit-Reset (a Unix time); retry=R sets the wait
    [[fail:N:K]]            the first K requests with this exact prompt get status N
                              (Retry-After: 0), later ones succeed
    [[drop]] [[drop:N]]     close the connection after N content chunks (default 3), no finish chunk
    [[error]]               3 content chunks, then finish_reason "error" with a top-level
                              "error": {"code": 504, "name": "PROVIDER_TIMEOUT", "message": ...}
    [[content_filter]]      3 content chunks, then finish_reason "content_filter"
    [[crlf]] [[cr]]         end lines with CRLF / CR instead of LF
    [[split_utf8]]          a multi-byte answer, every multi-byte character split across two writes
    [[heartbeat]]           a `: keep-alive` comment between events
    [[stall]] [[stall:S]]   after the first content chunk send nothing until the client goes away
                              (at most 60 s); with S, stall S seconds and then go on
    [[openai]]              OpenAI ending: finish chunk without usage, a {"choices": [], "usage": ...}
                              chunk when the request asks (stream_options.include_usage), then
                              `data: [DONE]` (also FakeGloo(style="openai"))
    [[usage]]               the same, and the usage chunk even when the request did not ask
    [[tools]]               two tool calls (index 0 and 1) streamed as deltas; finish "tool_calls"
    [[long]] [[long:N]]     exactly N content tokens (default 2000)
    [[markdown]]            a markdown answer: heading, emphasis, code, a python block, lists, a link
    [[hostile]]             an answer full of script tags, event handlers and javascript: links
    [[echo]]                answer with the prompt itself, markers removed
    [[stamp]]               every chunk carries "sent_ns": time.time_ns() taken as it is written
    [[html]]                200 with Content-Type text/html and an HTML page
    [[garbage]]             200 text/event-stream of random bytes that are not SSE
    [[huge_event:N]]        one `data:` line of exactly N bytes, written in 64 KiB pieces;
    [[huge_event:N:open]]     with `open` the line never ends (held until the client goes away)
    [[reset]]               200 headers, then the connection closes
    [[trickle]] [[trickle:S]]  the body one byte per write, S seconds apart (default 0.0002)
    [[spend_limit]]         429 with Gloo's weekly spend-limit body, X-RateLimit-Reset next Monday
    [[no_sources]]          a grounded answer that found no sources (`sources_returned: false`)

Everything else gets a plausible answer: canned ones for the demo's questions about the
resurrection and about discipleship, and a generic one that mentions the question. A request's
`max_tokens` cuts the answer with finish_reason "length". Without `"stream": true` the answer is one
chat.completion object, sent after the time streaming it would take; there [[drop]] closes without
an answer and [[error]] is a 504. Responses scripted with FakeGloo.enqueue() come before all of this
(no auth check, no validation).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import contextlib
import itertools
import json
import logging
import math
import random
import re
import secrets
import select
import shlex
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from collections.abc import Iterable, Iterator, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeGloo", "main"]

_TOKEN_PATH = "/oauth2/token"
_COMPLETIONS_PATH = "/ai/v2/chat/completions"
_GROUNDED_PATH = "/ai/v2/chat/completions/grounded"
_GUARDED_PATH = "/ai/v2/guarded/chat/completions"
_GUARDED_GROUNDED_PATH = _GUARDED_PATH + "/grounded"
_COMPLETION_PATHS = (_COMPLETIONS_PATH, _GROUNDED_PATH, _GUARDED_PATH, _GUARDED_GROUNDED_PATH)
_RESPONSES_PATH = "/ai/v1/responses"
_DEFAULT_PUBLISHER = "GlooGrounded"
_MAX_BODY_BYTES = 8 * 1024 * 1024
_POLL_SECONDS = 0.1          # how often a pause looks for a client that went away
_STALL_LIMIT = 60.0
_HUGE_WRITE = 64 * 1024
_FEW = 3                     # content chunks before [[drop]], [[error]], [[content_filter]]
_log = logging.getLogger("fake_gloo")


# ---------------------------------------------------------------------------
# Scenario markers
# ---------------------------------------------------------------------------

_MARKER = re.compile(r"[ \t]*\[\[([a-z][a-z0-9_]*)(?::([^\[\]]*))?\]\]")
_FLAGS = ("error", "content_filter", "split_utf8", "heartbeat", "tools", "markdown", "hostile", "echo",
          "stamp", "html", "garbage", "reset", "spend_limit", "no_sources", "error_event")
_KNOWN = set(_FLAGS) | {"slow", "status", "fail", "drop", "crlf", "cr", "stall", "openai", "usage", "long",
                        "huge_event", "trickle"}


class _BadMarker(ValueError):
    """A known marker with an argument it cannot use."""


@dataclass
class _Scenario:
    """The markers of one request, parsed."""

    slow: float | None = None
    status: int | None = None
    retry_after: int = 1
    fail: tuple[int, int] | None = None
    drop: int | None = None
    error: bool = False
    content_filter: bool = False
    eol: bytes = b"\n"
    split_utf8: bool = False
    heartbeat: bool = False
    stall: float | None = None
    openai: bool = False
    tools: bool = False
    long: int | None = None
    markdown: bool = False
    hostile: bool = False
    echo: bool = False
    stamp: bool = False
    html: bool = False
    garbage: bool = False
    huge_event: int | None = None
    huge_open: bool = False
    reset: bool = False
    trickle: float | None = None
    usage: bool = False
    spend_limit: bool = False
    no_sources: bool = False
    error_event: bool = False


def _parse_scenario(text: str) -> _Scenario:
    """Every known marker in `text`, later ones winning; raises _BadMarker on a bad argument."""
    scenario = _Scenario()
    for match in _MARKER.finditer(text):
        name, arg = match.group(1), match.group(2)
        if name not in _KNOWN:
            continue  # e.g. a wiki link; not ours
        try:
            _apply_marker(scenario, name, [] if arg is None else arg.split(":"))
        except ValueError as exc:
            raise _BadMarker(f"bad scenario marker {match.group(0).strip()}: {exc}") from None
    return scenario


def _apply_marker(s: _Scenario, name: str, args: list[str]) -> None:
    if name in _FLAGS:
        setattr(s, name, True)
    elif name in ("openai", "usage"):
        s.openai = True
        s.usage = s.usage or name == "usage"
    elif name in ("crlf", "cr"):
        s.eol = b"\r\n" if name == "crlf" else b"\r"
    elif name == "slow":
        s.slow = _seconds(args[0] if args else "")
    elif name == "status":
        s.status = _status(args[0] if args else "")
        for option in args[1:]:
            key, _, value = option.partition("=")
            if key != "retry":
                raise ValueError(f"unknown option {option!r} (only retry=SECONDS)")
            s.retry_after = _count(value)
    elif name == "fail":
        if len(args) != 2:
            raise ValueError("expected [[fail:STATUS:TIMES]]")
        s.fail = (_status(args[0]), _count(args[1]))
    elif name == "drop":
        s.drop = _count(args[0]) if args else _FEW
    elif name == "stall":
        s.stall = _seconds(args[0]) if args else _STALL_LIMIT
    elif name == "long":
        s.long = _count(args[0]) if args else 2000
    elif name == "huge_event":
        if not args or args[1:] not in ([], ["open"]):
            raise ValueError("expected [[huge_event:BYTES]] or [[huge_event:BYTES:open]]")
        s.huge_event, s.huge_open = _count(args[0]), args[1:] == ["open"]
    elif name == "trickle":
        s.trickle = _seconds(args[0]) if args else 0.0002


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < 3600:
        raise ValueError(f"{text!r} is out of range")
    return value


def _status(text: str) -> int:
    value = _count(text)
    if not 400 <= value <= 599:
        raise ValueError(f"{value} is not an error status (400-599)")
    return value


def _strip_markers(text: str) -> str:
    """The prompt as a person wrote it: known markers (and the blanks before them) removed."""
    return _MARKER.sub(lambda m: "" if m.group(1) in _KNOWN else m.group(0), text).strip()


# ---------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------

_RESURRECTION = (
    "The resurrection of Jesus is the cornerstone of Christian faith. Paul puts it bluntly: if Christ "
    "has not been raised, faith is futile (1 Corinthians 15:17). The empty tomb is what turns the death "
    "of a good teacher into good news.\n\n"
    "Its significance is usually described in three ways. First, it vindicates Jesus: God affirms his "
    "life, his teaching and his claims. Second, it is victory over sin and death, so forgiveness and new "
    "life are offered to everyone. Third, it is a promise: Christians hope for their own resurrection and "
    "for the renewal of all creation.\n\n"
    "Catholic, Orthodox and Protestant traditions stress these threads differently, but all of them see "
    "the resurrection shaping worship, giving hope in grief, and calling believers to live as people of "
    "a new beginning."
)
_DISCIPLESHIP = (
    "Christian discipleship means following Jesus as a whole way of life, not only holding beliefs about "
    "him. A disciple is a learner or apprentice: someone who stays close to a teacher in order to become "
    "like them.\n\n"
    "In the Gospels Jesus says \"Come, follow me\" (Mark 1:17), and the Great Commission sends his "
    "followers to make disciples, teaching them to obey everything he commanded (Matthew 28:19-20).\n\n"
    "Discipleship is practiced through prayer, Scripture, worship, community and service, and it is "
    "shaped by love of God and neighbor. Traditions describe it in different language, from spiritual "
    "formation to sanctification, yet they agree that it is lifelong, grounded in grace rather than "
    "performance, and lived out in ordinary relationships and work."
)
_UTF8_ANSWER = (
    "Grâce — ἀγάπη 🙏. Naïve café façade, “quotes”, 愛 and محبة: every one of these characters "
    "takes more than one byte in UTF-8."
)
_MARKDOWN = (
    "# Practices of discipleship\n\n"
    "Discipleship is **a whole way of life**, shaped by *grace* rather than performance. Some people "
    "keep their reading plan in a `plan.md` file.\n\n"
    "```python\n"
    "def reading_for(day, plan):\n"
    "    return plan[day % len(plan)]\n"
    "```\n\n"
    "1. Prayer\n2. Scripture\n3. Community\n\n"
    "- Worship on Sunday\n- Service during the week\n- Rest and Sabbath\n\n"
    "Read more at [the Bible Project](https://bibleproject.com)."
)
_HOSTILE = (
    "Here is a normal sentence before the tricks. <script>window.__pwned=1</script> "
    "An image: <img src=x onerror=\"window.__pwned=1\"> and a [click](javascript:window.__pwned=1) link. "
    "Also <a href=\"javascript:alert(1)\">x</a> and <b onclick=\"window.__pwned=1\">bold text</b>, "
    "<div onmouseover=\"window.__pwned=1\">hover here</div>. The answer ends with ordinary words."
)
_TOOL_CALLS = (("lookup_verse", {"reference": "John 11:25-26", "translation": "ESV"}),
               ("search_commentary", {"query": "resurrection hope", "limit": 3}))
_FAMILY_MODELS = {
    "openai": "gloo-openai-gpt-5-mini",
    "anthropic": "gloo-anthropic-claude-sonnet-4.5",
    "google": "gloo-google-gemini-2.5-flash",
    "open source": "gloo-meta-llama-3.3-70b-instruct",
}
# The model catalog the simulator serves at GET /platform/v2/models (public, no token), in the shape
# gloo-stream assumes for Gloo's (README): any id in it is accepted as `model`, any other refused with
# 400. Prices are USD per million tokens, made up: they price nothing Gloo bills.
_CATALOG_FIELDS = ("id", "name", "family", "context_window", "max_output_tokens", "capabilities",
                   "input_per_million", "output_per_million")
_CHAT, _TOOLS, _VISION, _REASONING, _RESPONSES = "chat", "tools", "vision", "reasoning", "responses"
_CATALOG: tuple[dict[str, Any], ...] = tuple(dict(zip(_CATALOG_FIELDS, row)) for row in (
    ("gloo-openai-gpt-5-mini", "GPT-5 mini", "openai", 400_000, 128_000,
     (_CHAT, _TOOLS, _VISION, _RESPONSES), 0.25, 2.0),
    ("gloo-openai-gpt-5-nano", "GPT-5 nano", "openai", 400_000, 128_000, (_CHAT, _TOOLS, _RESPONSES), 0.05, 0.4),
    ("gloo-openai-gpt-5", "GPT-5", "openai", 400_000, 128_000,
     (_CHAT, _TOOLS, _VISION, _REASONING, _RESPONSES), 1.25, 10.0),
    ("gloo-openai-gpt-5-pro", "GPT-5 pro", "openai", 400_000, 272_000,
     (_CHAT, _TOOLS, _VISION, _REASONING, _RESPONSES), 15.0, 120.0),
    ("gloo-openai-gpt-4.1", "GPT-4.1", "openai", 1_047_576, 32_768, (_CHAT, _TOOLS, _VISION, _RESPONSES), 2.0, 8.0),
    ("gloo-openai-gpt-4.1-mini", "GPT-4.1 mini", "openai", 1_047_576, 32_768,
     (_CHAT, _TOOLS, _VISION, _RESPONSES), 0.4, 1.6),
    ("gloo-openai-gpt-oss-120b", "gpt-oss 120B", "open source", 131_072, 32_768,
     (_CHAT, _TOOLS, _REASONING, _RESPONSES), 0.15, 0.6),
    ("gloo-anthropic-claude-sonnet-4.5", "Claude Sonnet 4.5", "anthropic", 200_000, 64_000,
     (_CHAT, _TOOLS, _VISION, _RESPONSES), 3.0, 15.0),
    ("gloo-anthropic-claude-haiku-4.5", "Claude Haiku 4.5", "anthropic", 200_000, 64_000,
     (_CHAT, _TOOLS, _VISION, _RESPONSES), 1.0, 5.0),
    ("gloo-anthropic-claude-opus-4.1", "Claude Opus 4.1", "anthropic", 200_000, 32_000,
     (_CHAT, _TOOLS, _VISION, _REASONING, _RESPONSES), 15.0, 75.0),
    ("gloo-google-gemini-2.5-flash", "Gemini 2.5 Flash", "google", 1_048_576, 65_536,
     (_CHAT, _TOOLS, _VISION, _RESPONSES), 0.3, 2.5),
    ("gloo-google-gemini-2.5-flash-lite", "Gemini 2.5 Flash-Lite", "google", 1_048_576, 65_536,
     (_CHAT, _TOOLS, _VISION, _RESPONSES), 0.1, 0.4),
    ("gloo-google-gemini-2.5-pro", "Gemini 2.5 Pro", "google", 1_048_576, 65_536,
     (_CHAT, _TOOLS, _VISION, _REASONING, _RESPONSES), 1.25, 10.0),
    ("gloo-meta-llama-3.3-70b-instruct", "Llama 3.3 70B Instruct", "open source", 131_072, 8_192,
     (_CHAT, _TOOLS, _RESPONSES), 0.6, 0.6),
    ("gloo-deepseek-r1", "DeepSeek R1", "open source", 131_072, 32_768, (_CHAT, _REASONING, _RESPONSES), 0.55, 2.19),
    ("gloo-mistral-large", "Mistral Large", "open source", 131_072, 8_192, (_CHAT, _TOOLS, _RESPONSES), 2.0, 6.0),
))
_MODEL_FAMILY: dict[str, str] = {model["id"]: model["family"] for model in _CATALOG}
_CATALOG_PATH = "/platform/v2/models"
_FAMILY_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic", "google": "Google", "open source": "Open Source"}
_TIERS = ("tier_1", "tier_2", "tier_3")
_TOOL_CHOICES = ("none", "auto", "required")
_TRADITIONS = ("evangelical", "catholic", "mainline", "not_faith_specific")
_ROLES = ("system", "developer", "user", "assistant", "tool")
# Words keep their leading blanks, punctuation stands alone: the pieces join back to the text exactly.
_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")


def _tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _generic_answer(question: str) -> str:
    shown = " ".join(question.split())
    if not shown:
        return ("Hello! Ask me about faith, Scripture or Christian life, and I will give you a clear, "
                "balanced answer.")
    if len(shown) > 160:
        shown = shown[:157].rstrip() + "..."
    return (f"You asked: \u201c{shown}\u201d. A careful answer would look at what Scripture says, how "
            "different Christian traditions have understood it, and what it means for everyday life, "
            "noting where thoughtful people disagree.\n\n"
            "This reply comes from the local Gloo simulator, so it stands in for a real model's answer. "
            "Point the client at the Gloo API with real credentials to hear from an actual model.")


def _answer_tokens(question: str, scenario: _Scenario) -> list[str]:
    if scenario.long is not None:
        base = _tokenize(_RESURRECTION + "\n\n" + _DISCIPLESHIP + "\n\n")
        return list(itertools.islice(itertools.cycle(base), scenario.long))
    if scenario.echo:
        text = question
    elif scenario.markdown:
        text = _MARKDOWN
    elif scenario.hostile:
        text = _HOSTILE
    elif scenario.split_utf8:
        text = _UTF8_ANSWER
    elif "resurrection" in question.lower():
        text = _RESURRECTION
    elif "disciple" in question.lower():
        text = _DISCIPLESHIP
    else:
        text = _generic_answer(question)
    return _tokenize(text)


def _tool_calls() -> list[dict]:
    return [{"index": i, "id": "call_" + secrets.token_hex(12), "type": "function",
             "function": {"name": name, "arguments": json.dumps(arguments)}}
            for i, (name, arguments) in enumerate(_TOOL_CALLS)]


def _tool_deltas(calls: list[dict]) -> list[dict]:
    """Each call opens with its id and name, then its arguments arrive in small pieces."""
    deltas = []
    for call in calls:
        head = dict(call, function={"name": call["function"]["name"], "arguments": ""})
        deltas.append({"tool_calls": [head]})
        arguments = call["function"]["arguments"]
        for start in range(0, len(arguments), 7):
            piece = {"index": call["index"], "function": {"arguments": arguments[start:start + 7]}}
            deltas.append({"tool_calls": [piece]})
    return deltas


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _route(body: dict, prompt: str) -> tuple[str, str, dict[str, Any]]:
    """(model, provider, routing metadata) for the request's routing choice; auto routing picks by the prompt."""
    crc = zlib.crc32(prompt.encode("utf-8", "replace"))
    if body.get("model"):
        model, mechanism, confidence = str(body["model"]), "direct_model_selection", 1.0
    elif body.get("model_family"):
        model, mechanism, confidence = _FAMILY_MODELS[body["model_family"]], "model_family", 1.0
    else:
        models = list(_FAMILY_MODELS.values())
        model, mechanism = models[crc % len(models)], "auto_routing"
        confidence = round(0.6 + (crc % 390) / 1000, 3)  # 0.600 .. 0.989, the same for the same prompt
    parts = model.split("-")
    provider = parts[1] if len(parts) > 2 and parts[0] == "gloo" else "gloo"
    family = _MODEL_FAMILY.get(model, "open source")
    routing: dict[str, Any] = {
        "model_family": _FAMILY_NAMES[family],
        "auto_routing": mechanism == "auto_routing",
        "routing_mechanism": mechanism,
        "routing_tier": _TIERS[crc % len(_TIERS)] if mechanism == "auto_routing" else "tier_2",
        "routing_confidence": confidence,
    }
    if isinstance(body.get("tradition"), str):
        routing["tradition"] = body["tradition"]
    return model, provider, routing


def _invalid(loc: Sequence[str | int], msg: str, kind: str, value: Any = None, **ctx: Any) -> dict[str, Any]:
    """One FastAPI (pydantic) validation item."""
    item: dict[str, Any] = {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}
    if ctx:
        item["ctx"] = ctx
    return item


def _choices(values: Sequence[str]) -> str:
    quoted = [f"'{value}'" for value in values]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]


def _check_number(body: dict, name: str, *, integer: bool, low: float | None = None,
                  high: float | None = None) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        return (_invalid([name], "Input should be a valid integer", "int_type", value) if integer
                else _invalid([name], "Input should be a valid number", "float_type", value))
    if not math.isfinite(value):
        return _invalid([name], "Input should be a finite number", "finite_number", value)
    if low is not None and value < low:
        return _invalid([name], f"Input should be greater than or equal to {low:g}", "greater_than_equal", value,
                        ge=low)
    if high is not None and value > high:
        return _invalid([name], f"Input should be less than or equal to {high:g}", "less_than_equal", value,
                        le=high)
    return None


def _check_choice(body: dict, name: str, allowed: Sequence[str]) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None or (isinstance(value, str) and value in allowed):
        return None
    return _invalid([name], f"Input should be {_choices(allowed)}", "enum", value, expected=_choices(allowed))


def _check_bool(body: dict, name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return None
    return _invalid([name], "Input should be a valid boolean", "bool_type", value)


def _problem(body: Any, *, grounded: bool = False) -> tuple[int, dict[str, Any]] | None:
    """Why a completion request is refused, as (status, Gloo's error body), or None.

    Shapes as Gloo answers them: 400 `{"error", "code"}` for bodies that are not a request at all,
    422 `{"detail": [{"type", "loc", "msg", "input"}...]}` for fields that fail validation.
    """
    if not isinstance(body, dict):
        return 400, _gloo_error("the request body must be a JSON object", "bad_request")
    messages = body.get("messages")
    if messages is None and not grounded:
        return 400, _gloo_error("messages is required", "bad_request")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            return 400, _gloo_error("messages must be a non-empty list", "bad_request")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                return 400, _gloo_error(f"messages[{i}] must be an object with a role", "bad_request")
    detail: list[dict[str, Any] | None] = []
    for i, message in enumerate(messages or ()):
        if message["role"] not in _ROLES:
            detail.append(_invalid(["messages", i, "role"], f"Input should be {_choices(_ROLES)}", "enum",
                                   message["role"], expected=_choices(_ROLES)))
        if not isinstance(message.get("content"), (str, list, type(None))):
            detail.append(_invalid(["messages", i, "content"], "Input should be a valid string", "string_type",
                                   message.get("content")))
    for name in ("auto_routing", "stream", "parallel_tool_calls", "include_citations"):
        detail.append(_check_bool(body, name))
    model = body.get("model")
    if model is not None and not (isinstance(model, str) and model.strip()):
        detail.append(_invalid(["model"], "Input should be a valid string", "string_type", model))
    detail.append(_check_choice(body, "model_family", tuple(_FAMILY_MODELS)))
    detail.append(_check_choice(body, "tradition", _TRADITIONS))
    detail.append(_check_choice(body, "tool_choice", _TOOL_CHOICES))
    detail.append(_check_number(body, "temperature", integer=False, low=0, high=2))
    detail.append(_check_number(body, "max_tokens", integer=True, low=1))
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        detail.append(_invalid(["tools"], "Input should be a valid list", "list_type", body["tools"]))
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            detail.append(_invalid(["stream_options"], "Input should be a valid dictionary", "dict_type", options))
        else:
            item = _check_bool(options, "include_usage")
            if item is not None:
                item["loc"] = ["body", "stream_options", "include_usage"]
            detail.append(item)
    if grounded:
        publisher = body.get("rag_publisher")
        if publisher is not None and not (isinstance(publisher, str) and publisher.strip()):
            detail.append(_invalid(["rag_publisher"], "Input should be a valid string", "string_type", publisher))
        detail.append(_check_number(body, "sources_limit", integer=True, low=1, high=10))
    found = [item for item in detail if item is not None]
    if found:
        return 422, {"detail": found}
    routes = [key for key in ("auto_routing", "model", "model_family") if body.get(key) not in (None, False)]
    if len(routes) != 1:
        return 422, {"detail": [_invalid([], "Value error, exactly one of auto_routing, model or model_family "
                                             "must be specified", "value_error",
                                         {key: body.get(key) for key in ("auto_routing", "model", "model_family")})]}
    if "model" in routes and model not in _MODEL_FAMILY:
        return 400, _gloo_error(f"unknown model '{model}': use a Gloo model id such as "
                                f"{_FAMILY_MODELS['anthropic']}, or auto_routing", "model_not_found")
    return None


def _gloo_error(message: str, code: str) -> dict[str, str]:
    """Gloo's error body: `{"error": "<text>", "code": "<text>"}`."""
    return {"error": message, "code": code}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass
class _Reply:
    """One answer, ready to send as chunks or as one chat.completion."""

    model: str
    provider: str
    deltas: list[dict]
    finish_reason: str
    prompt_tokens: int
    started: float  # time.monotonic() when the request arrived
    tool_calls: list[dict] | None = None
    routing: dict[str, Any] | None = None  # model_family, routing_mechanism, routing_tier, ...
    citations: list[dict] | None = None    # a grounded answer's sources (None: not grounded)
    include_citations: bool = True
    include_usage: bool = False

    def __post_init__(self) -> None:
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())

    def envelope(self, kind: str = "chat.completion.chunk") -> dict[str, Any]:
        envelope = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                    "provider": self.provider}
        envelope.update(self.routing or {})
        if self.citations is not None:
            envelope["sources_returned"] = bool(self.citations)
        return envelope

    def chunk(self, delta: dict, finish_reason: str | None = None) -> dict[str, Any]:
        chunk = self.envelope()
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        return chunk

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def elapsed_ms(self) -> int:
        return int(round((time.monotonic() - self.started) * 1000))


# Gloo's AI error object: `code` an internal number, `name` the symbolic code.
_PROVIDER_TIMEOUT = {"code": 2001, "name": "PROVIDER_TIMEOUT", "message": "The model provider timed out"}
_ERROR_CODES = {400: "bad_request", 401: "unauthorized_invalid_token", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 408: "request_timeout", 411: "length_required",
                413: "payload_too_large", 429: "too_many_requests", 500: "internal_server_error",
                502: "bad_gateway", 503: "service_unavailable", 504: "gateway_timeout"}
_SPEND_LIMIT = {"error": "Weekly spend limit reached for your organization; raise it in Gloo AI Studio or wait "
                         "for the next week", "code": "spend_limit_exceeded"}
_ERROR_MESSAGES = {401: "Invalid or expired token", 403: "Insufficient permissions",
                   429: "Rate limit exceeded", 500: "Internal server error (simulated)"}
_HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Sign in to continue</title></head>\n"
              b"<body><h1>Network login required</h1><p>This network intercepts web traffic. "
              b"Sign in to continue.</p></body></html>\n")


def _split_mid_character(data: bytes) -> list[bytes]:
    """`data` cut right after every UTF-8 lead byte, so each multi-byte character spans two pieces."""
    pieces, start = [], 0
    for i in range(1, len(data)):
        if data[i - 1] >= 0xC0 and 0x80 <= data[i] <= 0xBF:
            pieces.append(data[start:i])
            start = i
    pieces.append(data[start:])
    return pieces


# ---------------------------------------------------------------------------
# The Responses API (POST /ai/v1/responses): typed events, as Gloo says they mirror OpenAI's
# ---------------------------------------------------------------------------

_REASONING_MODELS = frozenset(model["id"] for model in _CATALOG if _REASONING in model["capabilities"])
_RESPONSE_FIELDS = frozenset({"input", "model", "instructions", "max_output_tokens", "temperature", "top_p",
                              "tools", "tool_choice", "parallel_tool_calls", "previous_response_id",
                              "reasoning", "text", "metadata", "stream", "store", "include", "truncation",
                              "user", "background", "service_tier", "stream_options", "prompt_cache_key",
                              "safety_identifier", "max_tool_calls", "top_logprobs", "conversation"})


def _response_problem(body: Any) -> tuple[int, dict[str, Any]] | None:
    """Why a Responses request is refused, as (status, error body), or None."""
    if not isinstance(body, dict):
        return 400, _gloo_error("the request body must be a JSON object", "bad_request")
    detail: list[dict[str, Any] | None] = []
    if "input" not in body:
        detail.append(_invalid(["input"], "Field required", "missing"))
    elif not isinstance(body["input"], (str, list)):
        detail.append(_invalid(["input"], "Input should be a valid string or list", "union_type", body["input"]))
    model = body.get("model")
    if model is None:
        detail.append(_invalid(["model"], "Field required", "missing"))
    elif not (isinstance(model, str) and model.strip()):
        detail.append(_invalid(["model"], "Input should be a valid string", "string_type", model))
    for name in sorted(set(body) - _RESPONSE_FIELDS):
        detail.append(_invalid([name], "Extra inputs are not permitted", "extra_forbidden", body[name]))
    detail.append(_check_bool(body, "stream"))
    detail.append(_check_number(body, "temperature", integer=False, low=0, high=2))
    detail.append(_check_number(body, "max_output_tokens", integer=True, low=1))
    choice = body.get("tool_choice")
    if choice is not None and not (choice in _TOOL_CHOICES or (isinstance(choice, dict) and isinstance(
            choice.get("type"), str))):
        detail.append(_invalid(["tool_choice"], f"Input should be {_choices(_TOOL_CHOICES)} or a tool object",
                               "union_type", choice))
    if body.get("tools") is not None and not (isinstance(body["tools"], list) and all(
            isinstance(tool, dict) and isinstance(tool.get("type"), str) for tool in body["tools"])):
        detail.append(_invalid(["tools"], "Input should be a list of tools with a type", "list_type", body["tools"]))
    found = [item for item in detail if item is not None]
    if found:
        return 422, {"detail": found}
    if model not in _MODEL_FAMILY:
        return 400, _gloo_error(f"unknown model '{model}': use a Gloo model id such as "
                                f"{_FAMILY_MODELS['anthropic']}", "model_not_found")
    return None


def _input_items(body: dict) -> list[dict]:
    value = body.get("input")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _input_parts(item: dict) -> list[dict]:
    content = item.get("content")
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    return [part for part in content if isinstance(part, dict)] if isinstance(content, list) else []


def _response_prompt(items: list[dict]) -> str:
    """The last user message's text (markers included)."""
    for item in reversed(items):
        if item.get("role") == "user":
            return "".join(str(part.get("text", "")) for part in _input_parts(item)
                           if part.get("type") in ("input_text", "text"))
    return ""


def _image_sizes(items: list[dict]) -> list[tuple[str, int]]:
    """(media type, bytes) of each `input_image` given as a data URL in the last user message."""
    for item in reversed(items):
        if item.get("role") == "user":
            found = []
            for part in _input_parts(item):
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if part.get("type") == "input_image" and isinstance(url, str):
                    match = re.match(r"data:([\w/+.-]+);base64,(.*)$", url, re.S)
                    try:
                        size = len(base64.b64decode(match.group(2), validate=True)) if match else 0
                    except (binascii.Error, ValueError):
                        size = 0
                    found.append((match.group(1) if match else "a linked image", size))
            return found
    return []


def _example_value(schema: Any, depth: int = 0) -> Any:
    """A plausible value for a JSON schema: its default, enum, or something of its type."""
    if not isinstance(schema, dict) or depth > 6:
        return None
    if "default" in schema:
        return schema["default"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        found = schema.get("properties")
        properties: dict[str, Any] = found if isinstance(found, dict) else {}
        listed = schema.get("required")
        required: list[Any] = listed if isinstance(listed, list) else list(properties)
        return {name: _example_value(properties.get(name), depth + 1) for name in required if name in properties}
    if kind == "array":
        return [_example_value(schema.get("items"), depth + 1)]
    return {"string": "John 11:25", "integer": 3, "number": 1.5, "boolean": True}.get(str(kind), "John 11:25")


def _text_format(body: dict) -> Any:
    """The JSON schema a Responses request asks its answer to fit (`text.format`), or None."""
    text = body.get("text")
    spec = text.get("format") if isinstance(text, dict) else None
    if not isinstance(spec, dict):
        return None
    if spec.get("type") == "json_schema" and isinstance(spec.get("schema"), dict):
        return spec["schema"]
    return {"type": "object"} if spec.get("type") == "json_object" else None


def _tiny_png(size: int = 64) -> bytes:
    """A small real PNG (a cross on a warm ground), built with zlib."""
    rows = []
    for y in range(size):
        row = bytearray(b"\x00")  # filter: none
        for x in range(size):
            on_cross = abs(x - size // 2) < size // 10 or abs(y - size // 3) < size // 10
            row += bytes((250, 245, 235)) if on_cross else bytes((190, 120, 60))
        rows.append(bytes(row))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


class _ResponsePlan:
    """One Responses answer: its output items, the deltas that build them, and how it ends."""

    def __init__(self, body: dict, scenario: _Scenario, started: float) -> None:
        items = _input_items(body)
        prompt = _response_prompt(items)
        self.model = str(body["model"])
        self.started = started
        self.id = "resp_" + secrets.token_hex(12)
        self.created = int(time.time())
        parts = self.model.split("-")
        self.provider = parts[1] if len(parts) > 2 and parts[0] == "gloo" else "gloo"
        self.routing = {"provider": self.provider,
                        "model_family": _FAMILY_NAMES[_MODEL_FAMILY.get(self.model, "open source")]}
        self.store = body.get("store") is not False  # kept for GET /ai/v1/responses/{id} unless store: false
        self.request = {key: body[key] for key in ("instructions", "max_output_tokens", "temperature", "tools",
                                                   "tool_choice", "previous_response_id", "metadata") if key in body}
        self.input_tokens = sum(len(_tokenize(str(part.get("text", ""))))
                                for item in items for part in _input_parts(item)) + 1
        self.reasoning = ""
        if self.model in _REASONING_MODELS or isinstance(body.get("reasoning"), dict):
            self.reasoning = ("The question asks for a clear answer. I should look at what Scripture says, "
                              "then at how the traditions read it, and keep it short.")
        tools = [tool for tool in body.get("tools") or () if isinstance(tool, dict)]
        functions = [tool for tool in tools if tool.get("type") == "function" and isinstance(tool.get("name"), str)]
        choice = body.get("tool_choice", "auto")
        answered = any(item.get("type") == "function_call_output" for item in items)
        self.call: dict[str, Any] | None = None
        self.image = False
        self.text_tokens: list[str] = []
        self.incomplete: str | None = None
        wants_image = any(tool.get("type") == "image_generation" for tool in tools) and (
            re.search(r"\b(draw|image|picture|paint|generate)\b", prompt, re.I) is not None
            or (isinstance(choice, dict) and choice.get("type") == "image_generation"))
        if functions and choice != "none" and not answered and not wants_image:
            named = choice.get("name") if isinstance(choice, dict) else None
            if named is None and isinstance(choice, dict) and isinstance(choice.get("function"), dict):
                named = choice["function"].get("name")
            tool = next((t for t in functions if t["name"] == named), functions[0])
            arguments = _example_value(tool.get("parameters") or {"type": "object", "properties": {}})
            self.call = {"name": tool["name"], "call_id": "call_" + secrets.token_hex(12),
                         "arguments": json.dumps(arguments if isinstance(arguments, dict) else {})}
        if self.call is None:
            self.image = wants_image
            if answered:
                outputs = [str(item.get("output", "")) for item in items if item.get("type") == "function_call_output"]
                shown = " ".join(" ".join(outputs).split())
                shown = shown[:157].rstrip() + "..." if len(shown) > 160 else shown
                text = f"Thank you: the tool answered \u201c{shown}\u201d. Based on that, here is the answer."
            elif self.image:
                text = "Here is the image you asked for."
            elif _text_format(body) is not None:  # structured output: JSON that fits the schema
                text = json.dumps(_example_value(_text_format(body)))
            else:
                text = "".join(_answer_tokens(_strip_markers(prompt), scenario))
                images = _image_sizes(items)
                if images:
                    text = " ".join(f"I see an image ({kind}, {size} bytes)." for kind, size in images) + " " + text
            self.text_tokens = _tokenize(text)
            limit = body.get("max_output_tokens")
            if isinstance(limit, int) and len(self.text_tokens) > limit:
                self.text_tokens, self.incomplete = self.text_tokens[:limit], "max_output_tokens"
            if scenario.content_filter:
                self.text_tokens, self.incomplete = self.text_tokens[:_FEW], "content_filter"
            if scenario.error or scenario.error_event:
                self.text_tokens = self.text_tokens[:_FEW]

    def response(self, status: str, output: list[dict], *, usage: bool = False,
                 error: dict | None = None) -> dict[str, Any]:
        response: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "model": self.model, "output": output, "error": error,
            "incomplete_details": {"reason": self.incomplete} if status == "incomplete" else None,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        }
        response.update(self.request)
        response.update(self.routing)
        if usage:
            output_tokens = len(self.text_tokens) + (len(_tokenize(self.call["arguments"])) if self.call else 0)
            response["usage"] = {"input_tokens": self.input_tokens, "output_tokens": output_tokens,
                                 "total_tokens": self.input_tokens + output_tokens,
                                 "output_tokens_details": {"reasoning_tokens": len(_tokenize(self.reasoning))}}
        return response

    def items(self) -> list[dict]:
        """The finished output items."""
        items: list[dict] = []
        if self.reasoning:
            items.append({"id": "rs_" + self.id[5:], "type": "reasoning",
                          "summary": [{"type": "summary_text", "text": self.reasoning}]})
        if self.call is not None:
            items.append({"id": "fc_" + self.id[5:], "type": "function_call", "status": "completed", **self.call})
        elif self.image:
            items.append({"id": "ig_" + self.id[5:], "type": "image_generation_call", "status": "completed",
                          "output_format": "png", "result": base64.b64encode(_tiny_png()).decode("ascii")})
        if self.call is None:
            items.append({"id": "msg_" + self.id[5:], "type": "message", "status": "completed", "role": "assistant",
                          "content": [{"type": "output_text", "text": "".join(self.text_tokens), "annotations": []}]})
        return items


# ---------------------------------------------------------------------------
# The wire: writes, pauses, and noticing a client that went away
# ---------------------------------------------------------------------------

class _ClientGone(Exception):
    """The client closed its end while we were still answering."""


class _Stopping(Exception):
    """The simulator is shutting down; end the response now."""


class _Wire:
    """The body of one response, written event by event, each write flushed."""

    def __init__(self, handler: _Handler, scenario: _Scenario) -> None:
        self._out = handler.wfile
        self._sock: socket.socket = handler.connection
        self._stopping = handler.server.fake._stopping
        self._eol = scenario.eol
        self._split = scenario.split_utf8
        self._trickle = scenario.trickle
        self._stamp = scenario.stamp

    def event(self, chunk: dict[str, Any]) -> None:
        if self._stamp:
            chunk["sent_ns"] = time.time_ns()
        self.data(_dumps(chunk))

    def data(self, payload: bytes) -> None:
        self.write(b"data: " + payload + self._eol + self._eol)

    def comment(self, text: str = "keep-alive") -> None:
        self.write(b": " + text.encode("utf-8") + self._eol + self._eol)

    def write(self, data: bytes) -> None:
        if self._trickle is not None:
            # Byte i goes out at start + i * trickle: a schedule, so the cost of each write and
            # each wake-up does not add up over thousands of bytes.
            start = time.monotonic()
            for i in range(len(data)):
                if i:
                    self.pause_until(start + i * self._trickle)
                self._send(data[i:i + 1])
        elif self._split:
            for i, piece in enumerate(_split_mid_character(data)):
                if i:
                    self.pause(0.002)  # so the reader very likely sees the halves apart
                self._send(piece)
        else:
            self._send(data)

    def _send(self, data: bytes) -> None:
        try:
            self._out.write(data)
            self._out.flush()
        except OSError:  # BrokenPipe, ConnectionReset, a send timeout: the reader is gone
            raise _ClientGone from None

    def pause(self, seconds: float) -> None:
        """Sleep, but end early (raising) if the client goes away or the simulator stops."""
        self.pause_until(time.monotonic() + seconds)

    def pause_until(self, deadline: float) -> None:
        """Sleep until `deadline` (time.monotonic()), ending early like pause()."""
        while True:
            if self._stopping.is_set():
                raise _Stopping
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # poll() waits whole milliseconds and rounds a fraction up (0.2 ms would take 1 ms): wait
            # the whole milliseconds there, then sleep the sub-millisecond rest exactly.
            whole_ms = int(min(remaining, _POLL_SECONDS) * 1000)
            try:
                readable = _wait_readable(self._sock, whole_ms / 1000)
                # Readable with nothing to peek at is the end of the client's stream.
                gone = bool(readable) and self._sock.recv(1, socket.MSG_PEEK) == b""
            except (OSError, ValueError):
                gone = True
            if gone:
                raise _ClientGone
            if readable:  # the client sent more bytes: we cannot see its EOF, so just wait
                time.sleep(min(max(0.0, deadline - time.monotonic()), _POLL_SECONDS))
            elif not whole_ms:  # under a millisecond left, and the socket was just looked at
                time.sleep(max(0.0, deadline - time.monotonic()))


# ---------------------------------------------------------------------------
# HTTP handler
# ---------------------------------------------------------------------------

def _wait_readable(sock: socket.socket, timeout: float) -> bool:
    """True if `sock` is readable within `timeout` (poll, unlike select, takes any descriptor number)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(timeout * 1000))
    return bool(select.select([sock], [], [], timeout)[0])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], fake: FakeGloo) -> None:
        self.fake = fake
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("error while answering %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeGloo/1.0"
    sys_version = ""
    timeout = 30  # seconds a silent client may hold a connection (header or body read)
    server: _Server

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):  # every flush its own segment, as a streaming server does
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        if not self.server.fake.quiet:
            sys.stderr.write(f"fake_gloo: {self.address_string()} {format % args}\n")

    # -- routing ------------------------------------------------------------

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path == _TOKEN_PATH:
                self._token()
            elif path in _COMPLETION_PATHS:
                self._completions(path)
            elif path == _RESPONSES_PATH:
                self._responses()
            else:
                self._send_error(404, f"no such endpoint: POST {path}", close=True)
        except Exception:  # the request boundary: log it, end the connection, never crash the server
            _log.debug("failed to answer POST %s", path, exc_info=True)
            self.close_connection = True

    def _not_allowed(self) -> None:
        path = urlsplit(self.path).path
        if path == _TOKEN_PATH or path in _COMPLETION_PATHS or path == _RESPONSES_PATH:
            self._send_error(405, f"{self.command} is not allowed here; use POST", {"Allow": "POST"}, close=True)
        else:
            self._send_error(404, f"no such endpoint: {self.command} {path}", close=True)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.rstrip("/") == _CATALOG_PATH:
            with self.server.fake._lock:
                self.server.fake.catalog_requests.append(dict(self.headers.items()))
            self._send_json(200, {"data": [dict(model, capabilities=list(model["capabilities"]))
                                           for model in _CATALOG]})
            return
        if not path.startswith(_RESPONSES_PATH + "/"):
            self._not_allowed()
            return
        fake = self.server.fake
        authorization = self.headers.get("Authorization", "")
        if not authorization.strip() or not fake._authorized(authorization):
            self._send_error(401, headers={"WWW-Authenticate": "Bearer"})
            return
        stored = fake._stored_response(path[len(_RESPONSES_PATH) + 1:])
        if stored is None:
            self._send_error(404, "no stored response with that id", code="not_found")
        else:
            self._send_json(200, stored)

    do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's errors (bad request line, unknown method, ...) as JSON, like ours."""
        self._send_error(int(code), message or HTTPStatus(int(code)).phrase, close=True)

    # -- responses ----------------------------------------------------------

    def _send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None, *,
                   close: bool = False) -> None:
        data = _dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
            self.wfile.flush()

    def _send_error(self, status: int, message: str | None = None,
                    headers: Mapping[str, str] | None = None, *, close: bool = False,
                    code: str | None = None) -> None:
        """An error in Gloo's shape: `{"error": "<text>", "code": "<text>"}`; a 422 as FastAPI's `detail` list."""
        text = message or _ERROR_MESSAGES.get(status) or HTTPStatus(status).phrase
        if status == 422:
            payload: dict[str, Any] = {"detail": [{"type": "value_error", "loc": ["body"], "msg": text,
                                                   "input": None}]}
        else:
            payload = _gloo_error(text, code or _ERROR_CODES.get(status, "error"))
        self._send_json(status, payload, headers, close=close)

    def _start_body(self, content_type: str = "text/event-stream") -> None:
        """Status and headers of a body that runs until the connection closes."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering why it could not be read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._send_error(411, "send the body with a Content-Length, not chunked", close=True)
            return None
        length = self.headers.get("Content-Length")
        if length is None:
            self._send_error(411, "Content-Length required", close=True)
            return None
        if not length.strip().isdigit():
            self._send_error(400, "bad Content-Length", close=True)
            return None
        if int(length) > _MAX_BODY_BYTES:
            self._send_error(413, f"the body is over {_MAX_BODY_BYTES} bytes", close=True)
            return None
        data = self.rfile.read(int(length))
        if len(data) < int(length):
            self.close_connection = True  # the client went away mid-body: no one to answer
            return None
        return data

    # -- token endpoint -----------------------------------------------------

    def _token(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        if body is None:
            return
        fake._count_token_request()
        if fake.token_delay:
            time.sleep(fake.token_delay)
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)

        def field(name: str) -> str:
            return (form.get(name) or [""])[0]

        client_id, client_secret = _basic_credentials(self.headers.get("Authorization", "")) or (
            field("client_id"), field("client_secret"))
        if (client_id, client_secret) != (fake.client_id, fake.client_secret):
            self._send_json(401, {"error": "invalid_client", "error_description": "Client authentication failed"},
                            {"WWW-Authenticate": 'Basic realm="fake-gloo"'})
        elif not field("grant_type"):
            self._send_json(400, {"error": "invalid_request", "error_description": "grant_type is required"})
        elif field("grant_type") != "client_credentials":
            self._send_json(400, {"error": "unsupported_grant_type",
                                  "error_description": "only client_credentials is supported"})
        elif field("scope") not in ("", "api/access"):
            self._send_json(400, {"error": "invalid_scope", "error_description": "the scope is api/access"})
        else:
            self._send_json(200, {"access_token": fake._issue_token(), "expires_in": fake.expires_in,
                                  "token_type": "Bearer"}, {"Cache-Control": "no-store"})

    # -- completions endpoint -----------------------------------------------

    def _accept(self) -> Any:
        """The request's JSON body once it is read, recorded and authorised; _INVALID after answering."""
        fake = self.server.fake
        raw = self._read_body()
        if raw is None:
            return _INVALID
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = _INVALID
        else:
            fake._record({"body": body, "headers": dict(self.headers.items()), "path": self.path})
        scripted = fake._next_scripted()
        if scripted is not None:
            self._play(scripted)
            return _INVALID
        if body is _INVALID:
            self._send_error(400, "the request body is not valid JSON")
            return _INVALID
        authorization = self.headers.get("Authorization", "")
        if not authorization.strip():
            self._send_error(401, "Authorization header is missing", {"WWW-Authenticate": "Bearer"},
                             code="unauthorized_missing_authorization")
            return _INVALID
        if not fake._authorized(authorization):
            self._send_error(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return _INVALID
        return body

    def _refused(self, scenario: _Scenario, prompt: str, *, stream: bool) -> bool:
        """Answer a scenario's failure before the stream (status, spend limit, HTML, reset); True if one was."""
        fake = self.server.fake
        if scenario.fail is not None and fake._should_fail(prompt, scenario.fail[1]):
            self._send_error(scenario.fail[0], headers=_retry_headers(scenario.fail[0], 0, always=True))
        elif scenario.spend_limit:
            reset = _next_week()
            self._send_json(429, _SPEND_LIMIT, {"Retry-After": str(max(1, int(reset - time.time()))),
                                                "X-RateLimit-Reset": str(reset)})
        elif scenario.status is not None:
            self._send_error(scenario.status, headers=_retry_headers(scenario.status, scenario.retry_after))
        elif scenario.html:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(_HTML_PAGE)))
            self.end_headers()
            self.wfile.write(_HTML_PAGE)
        elif scenario.reset:
            self._start_body("text/event-stream" if stream else "application/json")
        else:
            return False
        return True

    def _completions(self, path: str) -> None:
        fake = self.server.fake
        grounded = path.endswith("/grounded")
        started = time.monotonic()
        body = self._accept()
        if body is _INVALID:
            return
        problem = _problem(body, grounded=grounded)
        if problem is not None:
            self._send_json(*problem)
            return
        if grounded and body.get("messages") is None:
            body = dict(body, messages=[{"role": "user", "content": "Hello world!"}])  # Gloo's documented default
        prompt = _last_user_text(body["messages"])
        try:
            scenario = _parse_scenario(fake.scenario + " " + prompt)
        except _BadMarker as exc:
            self._send_error(400, str(exc))
            return
        if not self._refused(scenario, prompt, stream=bool(body.get("stream"))):
            reply = _build_reply(body, prompt, scenario, started, grounded=grounded)
            if body.get("stream"):
                self._stream(reply, scenario)
            else:
                self._answer(reply, scenario)

    def _stream(self, reply: _Reply, scenario: _Scenario) -> None:
        fake = self.server.fake
        self._start_body()
        wire = _Wire(self, scenario)
        delay = scenario.slow if scenario.slow is not None else fake.delay
        with fake._responding(stream=True):
            if scenario.garbage:
                rng = random.Random(1234)
                wire.write(bytes(rng.randrange(256) for _ in range(4096)))
                return
            if reply.citations is not None and reply.include_citations:
                # Gloo: "citations are prepended as the first SSE event before any content chunks".
                wire.event(dict(reply.envelope(), choices=[], citations=reply.citations))
            wire.event(reply.chunk({"role": "assistant", "content": ""}))
            if scenario.huge_event is not None:
                wire.pause(delay)
                line = _huge_event_line(reply, scenario.huge_event)
                for start in range(0, len(line), _HUGE_WRITE):
                    wire.write(line[start:start + _HUGE_WRITE])
                if scenario.huge_open:
                    wire.pause(_STALL_LIMIT)
                    return
                wire.write(scenario.eol * 2)
            for index, delta in enumerate(reply.deltas):
                if index == scenario.drop:
                    return
                if scenario.heartbeat:
                    wire.comment()
                wire.pause(delay)
                chunk = reply.chunk(delta)
                if index == 0:
                    chunk["ttft_ms"] = reply.elapsed_ms()
                wire.event(chunk)
                if index == 0 and scenario.stall is not None:
                    wire.pause(scenario.stall)
            if scenario.drop is not None:
                return  # fewer content chunks than the drop point: drop before the finish
            if scenario.heartbeat:
                wire.comment()
            finish = reply.chunk({}, reply.finish_reason)
            usage = reply.usage(len(reply.deltas))
            if reply.finish_reason == "error":
                finish["error"] = dict(_PROVIDER_TIMEOUT)
                wire.event(finish)
            elif scenario.openai or fake.style == "openai":
                wire.event(finish)
                if reply.include_usage or scenario.usage:  # [[usage]] asks for it whatever the request says
                    wire.event(dict(reply.envelope(), choices=[], usage=usage))
                wire.data(b"[DONE]")
            else:
                if reply.include_usage:  # only when asked: stream_options.include_usage
                    finish["usage"] = usage
                wire.event(finish)

    def _wait_to_answer(self, scenario: _Scenario, tokens: int) -> bool:
        """Wait the time streaming `tokens` would take; then whether to answer ([[drop]]: close instead).
        Raises _ClientGone (for fake._responding) when the client leaves meanwhile."""
        delay = scenario.slow if scenario.slow is not None else self.server.fake.delay
        self.close_connection = True  # unless the answer is sent whole
        _Wire(self, scenario).pause(delay * tokens + (scenario.stall or 0.0))
        self.close_connection = scenario.drop is not None
        return not self.close_connection

    def _answer(self, reply: _Reply, scenario: _Scenario) -> None:
        """The whole answer as one chat.completion, after the time streaming it would take."""
        with self.server.fake._responding(stream=False):
            if not self._wait_to_answer(scenario, len(reply.deltas)):
                return
            if reply.finish_reason == "error":
                self._send_error(504, str(_PROVIDER_TIMEOUT["message"]))
                return
            message: dict[str, Any] = {"role": "assistant",
                                       "content": "".join(d.get("content", "") for d in reply.deltas)}
            if reply.tool_calls:
                message = {"role": "assistant", "content": None, "tool_calls": reply.tool_calls}
            answer = dict(reply.envelope("chat.completion"), usage=reply.usage(len(reply.deltas)))
            answer["choices"] = [{"index": 0, "message": message, "finish_reason": reply.finish_reason}]
            if reply.citations is not None and reply.include_citations:
                answer["citations"] = reply.citations
            self._send_json(200, answer)

    def _responses(self) -> None:
        started = time.monotonic()
        body = self._accept()
        if body is _INVALID:
            return
        problem = _response_problem(body)
        if problem is not None:
            self._send_json(*problem)
            return
        prompt = _response_prompt(_input_items(body))
        try:
            scenario = _parse_scenario(self.server.fake.scenario + " " + prompt)
        except _BadMarker as exc:
            self._send_error(400, str(exc))
            return
        if self._refused(scenario, prompt, stream=bool(body.get("stream"))):
            return
        plan = _ResponsePlan(body, scenario, started)
        if body.get("stream"):
            self._stream_response(plan, scenario)
        else:
            self._answer_response(plan, scenario)

    def _stream_response(self, plan: _ResponsePlan, scenario: _Scenario) -> None:
        fake = self.server.fake
        self._start_body()
        wire = _Wire(self, scenario)
        delay = scenario.slow if scenario.slow is not None else fake.delay
        numbers = itertools.count()
        eol = scenario.eol

        def send(kind: str, **fields: Any) -> None:
            event = {"type": kind, "sequence_number": next(numbers), **fields}
            wire.write(b"event: " + kind.encode() + eol + b"data: " + _dumps(event) + eol + eol)

        with fake._responding(stream=True):
            send("response.created", response=plan.response("in_progress", []))
            send("response.in_progress", response=plan.response("in_progress", []))
            done: list[dict] = []
            for index, item in enumerate(plan.items()):
                where = {"item_id": item["id"], "output_index": index}
                kind = item["type"]
                if kind == "reasoning":
                    send("response.output_item.added", output_index=index, item=dict(item, summary=[]))
                    part = {"type": "summary_text", "text": ""}
                    send("response.reasoning_summary_part.added", **where, summary_index=0, part=part)
                    for piece in _tokenize(plan.reasoning):
                        wire.pause(delay)
                        send("response.reasoning_summary_text.delta", **where, summary_index=0, delta=piece)
                    send("response.reasoning_summary_text.done", **where, summary_index=0, text=plan.reasoning)
                    send("response.reasoning_summary_part.done", **where, summary_index=0,
                         part=dict(part, text=plan.reasoning))
                elif kind == "function_call":
                    send("response.output_item.added", output_index=index,
                         item=dict(item, arguments="", status="in_progress"))
                    arguments = item["arguments"]
                    for start in range(0, len(arguments), 7):
                        wire.pause(delay)
                        send("response.function_call_arguments.delta", **where, delta=arguments[start:start + 7])
                    send("response.function_call_arguments.done", **where, arguments=arguments)
                elif kind == "image_generation_call":
                    send("response.output_item.added", output_index=index,
                         item={"id": item["id"], "type": kind, "status": "in_progress"})
                    send("response.image_generation_call.in_progress", **where)
                    send("response.image_generation_call.generating", **where)
                    wire.pause(delay * 10)
                    send("response.image_generation_call.completed", **where)
                else:
                    send("response.output_item.added", output_index=index,
                         item=dict(item, status="in_progress", content=[]))
                    text_part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": []}
                    send("response.content_part.added", **where, content_index=0, part=text_part)
                    for position, token in enumerate(plan.text_tokens):
                        if position == scenario.drop:
                            return
                        if scenario.heartbeat:
                            wire.comment()
                        wire.pause(delay)
                        send("response.output_text.delta", **where, content_index=0, delta=token, logprobs=[])
                        if position == 0 and scenario.stall is not None:
                            wire.pause(scenario.stall)
                    if scenario.drop is not None:
                        return  # fewer tokens than the drop point: drop before the end
                    if scenario.error:
                        error = {"code": "server_error", "message": str(_PROVIDER_TIMEOUT["message"])}
                        send("response.failed", response=plan.response("failed", done, error=error))
                        return
                    if scenario.error_event:
                        send("error", code="server_error", message=str(_PROVIDER_TIMEOUT["message"]), param=None)
                        return
                    text = "".join(plan.text_tokens)
                    send("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
                    send("response.content_part.done", **where, content_index=0, part=dict(text_part, text=text))
                send("response.output_item.done", output_index=index, item=item)
                done.append(item)
            status = "incomplete" if plan.incomplete else "completed"
            final = plan.response(status, done, usage=True)
            send("response." + status, response=final)
            if plan.store:
                fake._store_response(final)

    def _answer_response(self, plan: _ResponsePlan, scenario: _Scenario) -> None:
        """The whole response object, after the time streaming it would take."""
        fake = self.server.fake
        with fake._responding(stream=False):
            if not self._wait_to_answer(scenario, len(plan.text_tokens)):
                return
            if scenario.error or scenario.error_event:
                self._send_error(500, str(_PROVIDER_TIMEOUT["message"]), code="server_error")
                return
            status = "incomplete" if plan.incomplete else "completed"
            final = plan.response(status, plan.items(), usage=True)
            if plan.store:
                fake._store_response(final)
            self._send_json(200, final)

    def _play(self, scripted: _Scripted) -> None:
        self.send_response(scripted.status)
        for name, value in scripted.headers:
            self.send_header(name, value)
        if "connection" not in {name.lower() for name, _ in scripted.headers}:
            self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        wire = _Wire(self, _Scenario())
        with self.server.fake._responding(stream=True):
            for index, data in enumerate(scripted.writes):
                if index:
                    wire.pause(scripted.delay)
                wire.write(data)


_INVALID = object()


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    client_id, sep, client_secret = decoded.partition(":")
    return (client_id, client_secret) if sep else None


def _retry_headers(status: int, seconds: int, *, always: bool = False) -> dict[str, str]:
    headers = {}
    if always or status in (429, 503):
        headers["Retry-After"] = str(seconds)
    if status == 429:
        headers["X-RateLimit-Reset"] = str(math.ceil(time.time() + seconds))  # a Unix time, as Gloo's gateway
    return headers


def _build_reply(body: dict, prompt: str, scenario: _Scenario, started: float, *,
                 grounded: bool = False) -> _Reply:
    model, provider, routing = _route(body, prompt)
    prompt_tokens = sum(len(_tokenize(_content_text(m.get("content")))) for m in body["messages"])
    calls = None
    functions = [tool["function"] for tool in body.get("tools") or ()
                 if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict)
                 and isinstance(tool["function"].get("name"), str)]
    last = body["messages"][-1]
    choice = body.get("tool_choice", "auto")
    answered = last.get("role") == "tool" and choice != "required"  # a forced model calls a tool every time
    if functions and choice != "none" and not answered:
        # Like a model: it calls the request's own (first) tool, with arguments that fit its schema.
        arguments = _example_value(functions[0].get("parameters") or {"type": "object", "properties": {}})
        calls = [{"index": 0, "id": "call_" + secrets.token_hex(12), "type": "function",
                  "function": {"name": functions[0]["name"],
                               "arguments": json.dumps(arguments if isinstance(arguments, dict) else {})}}]
        deltas, finish = _tool_deltas(calls), "tool_calls"
    elif scenario.tools and not answered:
        calls = _tool_calls()
        deltas, finish = _tool_deltas(calls), "tool_calls"
    else:
        question = _strip_markers(prompt)
        if answered:  # a tool's result came back: the answer uses it, so an agent loop ends
            shown = " ".join(_content_text(last.get("content")).split())
            shown = shown[:157].rstrip() + "..." if len(shown) > 160 else shown
            tokens = _tokenize(f"Thank you: the tool answered \u201c{shown}\u201d. Based on that, here is the answer.")
        else:
            tokens = _answer_tokens(question, scenario)
        finish = "stop"
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, finish = tokens[:max_tokens], "length"
        if scenario.error or scenario.content_filter:
            tokens, finish = tokens[:_FEW], "error" if scenario.error else "content_filter"
        deltas = [{"content": token} for token in tokens]
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    citations = None
    if grounded:
        citations = _citations(prompt, str(body.get("rag_publisher") or _DEFAULT_PUBLISHER),
                               body.get("sources_limit") or 3, none=scenario.no_sources)
    return _Reply(model, provider, deltas, finish, prompt_tokens, started, calls, routing, citations,
                  body.get("include_citations") is not False, include_usage)


_SOURCES = (
    ("The Resurrection and Christian Hope", "resurrection-and-hope",
     "Christ's rising is the firstfruits of those who have fallen asleep, the ground of Christian hope."),
    ("What Discipleship Means Today", "discipleship-today",
     "To follow Jesus is to learn from him, to be shaped by him, and to join his mission in the world."),
    ("Building Community in the Local Church", "church-community",
     "Small groups, shared meals and service together knit a congregation into a family."),
    ("Grace in Everyday Life", "everyday-grace",
     "Grace is God's undeserved favour, received in faith and lived out in gratitude."),
    ("Reading Scripture Well", "reading-scripture",
     "Read each passage in its context, with the whole story of Scripture in view."),
    ("Prayer as Conversation", "prayer-conversation",
     "Prayer is speaking and listening to God, alone and with others."),
    ("Forgiveness and Reconciliation", "forgiveness",
     "As we have been forgiven, we forgive; reconciliation follows repentance."),
    ("Serving Your Neighbour", "serving-neighbours",
     "Love of God shows itself in practical love for the people next to us."),
    ("Sabbath and Rest", "sabbath-rest", "Rest is a gift that reminds us our worth is not in our work."),
    ("Hope in Suffering", "hope-in-suffering", "Lament and trust belong together in the life of faith."),
)


def _citations(prompt: str, publisher: str, limit: int, *, none: bool = False) -> list[dict]:
    """`limit` plausible sources from `publisher`, the most relevant to the prompt first."""
    if none:
        return []
    words = set(re.findall(r"\w+", prompt.lower()))
    ranked = sorted(_SOURCES, key=lambda source: -len(words & set(re.findall(r"\w+", (source[0] + " " + source[2])
                                                                               .lower()))))
    slug = re.sub(r"[^a-z0-9]+", "-", publisher.lower()).strip("-") or "publisher"
    return [{"title": title, "url": f"https://{slug}.example.org/articles/{path}", "publisher": publisher,
             "snippet": snippet} for title, path, snippet in ranked[:max(1, min(10, int(limit)))]]


def _next_week() -> int:
    """The Unix time of next Monday 00:00 UTC, when a weekly spend limit resets."""
    now = time.time()
    day = int(now // 86400)
    monday = day + (7 - (day + 3) % 7)  # 1970-01-01 was a Thursday
    return monday * 86400


def _huge_event_line(reply: _Reply, size: int) -> bytes:
    """`data: <content chunk>` padded with "x" content to exactly `size` bytes (if it fits)."""
    chunk = reply.chunk({"content": ""})
    padding = max(0, size - len(b"data: " + _dumps(chunk)))
    chunk["choices"][0]["delta"]["content"] = "x" * padding
    return b"data: " + _dumps(chunk)


# ---------------------------------------------------------------------------
# The simulator
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Scripted:
    status: int
    headers: tuple[tuple[str, str], ...]
    writes: tuple[bytes, ...]
    delay: float


class FakeGloo:
    """The Gloo API on loopback: a ThreadingHTTPServer in a background thread.

    Use it as a context manager, or call start() and stop(). `delay` and `style` may be changed
    while it runs. `clock` (seconds, monotonic) decides when tokens expire; tests pass a fake one.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, client_id: str = "fake-client-id",
                 client_secret: str = "fake-client-secret", expires_in: int = 3600, delay: float = 0.0,
                 style: str = "gloo", api_key: str | None = None, token_delay: float = 0.0,
                 scenario: str = "", quiet: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        if style not in ("gloo", "openai"):
            raise ValueError(f"style must be 'gloo' or 'openai', not {style!r}")
        _parse_scenario(scenario)  # a bad marker fails here, not on every request
        self.host, self.port = host, port
        self.client_id, self.client_secret = client_id, client_secret
        self.expires_in, self.delay, self.style = expires_in, delay, style
        self.api_key, self.token_delay, self.scenario = api_key, token_delay, scenario
        self.quiet, self.clock = quiet, clock
        self.issued_tokens: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.catalog_requests: list[dict[str, str]] = []  # the headers of each GET of the model catalog
        self._lock = threading.Lock()
        self._disconnected = threading.Condition(self._lock)
        self._token_requests = self._disconnects = self._active_streams = 0
        self._token_expiry: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._script: collections.deque[_Scripted] = collections.deque()
        self._responses: dict[str, dict[str, Any]] = {}  # completed Responses API answers, by id
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------

    def start(self) -> FakeGloo:
        """Bind and serve in a background thread (idempotent); returns self."""
        if self._server is None:
            self._stopping.clear()
            self._server = _Server((self.host, self.port), self)
            self.port = self._server.server_address[1]
            # stop() waits for one poll of the accept loop: keep it short, tests start and stop many servers.
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                            name=f"fake-gloo-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end any stream in progress, and close the socket (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeGloo:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT` once started."""
        if self._server is None:
            raise RuntimeError("FakeGloo is not running: call start() or use it in a with block")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        """The OAuth token endpoint."""
        return self.base_url + _TOKEN_PATH

    @property
    def api_url(self) -> str:
        """The chat completions endpoint."""
        return self.base_url + _COMPLETIONS_PATH

    @property
    def responses_url(self) -> str:
        """The Responses API endpoint."""
        return self.base_url + _RESPONSES_PATH

    @property
    def env(self) -> dict[str, str]:
        """The environment that points a client here (GLOO_API_KEY only when api_key is set)."""
        env = {"GLOO_CLIENT_ID": self.client_id, "GLOO_CLIENT_SECRET": self.client_secret,
               "GLOO_TOKEN_URL": self.token_url, "GLOO_API_URL": self.api_url}
        if self.api_key is not None:
            env["GLOO_API_KEY"] = self.api_key
        return env

    # -- what happened ----------------------------------------------------------

    @property
    def token_requests(self) -> int:
        """POSTs to the token endpoint so far, granted or not."""
        with self._lock:
            return self._token_requests

    @property
    def disconnects(self) -> int:
        """Completion responses whose client went away before the end."""
        with self._lock:
            return self._disconnects

    @property
    def active_streams(self) -> int:
        """Streaming responses being written right now."""
        with self._lock:
            return self._active_streams

    def wait_for_disconnect(self, timeout: float = 5.0, *, count: int = 1) -> bool:
        """True once `count` clients in all have gone away mid-response; False after `timeout`."""
        with self._disconnected:
            return self._disconnected.wait_for(lambda: self._disconnects >= count, timeout)

    def enqueue(self, status: int = 200, headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
                writes: Sequence[bytes] = (), delay: float = 0.0) -> None:
        """Script the next completion response exactly: status, headers, then each bytes object
        written and flushed on its own, `delay` seconds apart, then the connection closes."""
        pairs = tuple((headers or {}).items()) if isinstance(headers, Mapping) else tuple(headers or ())
        if not all(isinstance(data, bytes) for data in writes):
            raise TypeError("writes must be a sequence of bytes objects")
        with self._lock:
            self._script.append(_Scripted(status, pairs, tuple(writes), delay))

    # -- for the handler --------------------------------------------------------

    def _count_token_request(self) -> None:
        with self._lock:
            self._token_requests += 1

    def _issue_token(self) -> str:
        token = "fake-token-" + secrets.token_hex(16)
        with self._lock:
            self._token_expiry[token] = self.clock() + self.expires_in
            self.issued_tokens.append(token)
        return token

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        if self.api_key is not None and token == self.api_key:
            return True
        with self._lock:
            expiry = self._token_expiry.get(token)
        return expiry is not None and self.clock() < expiry

    def _store_response(self, response: dict[str, Any]) -> None:
        with self._lock:
            self._responses[response["id"]] = response
            while len(self._responses) > 256:  # the oldest go
                self._responses.pop(next(iter(self._responses)))

    def _stored_response(self, response_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._responses.get(response_id)

    def _record(self, request: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_scripted(self) -> _Scripted | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def _should_fail(self, prompt: str, times: int) -> bool:
        with self._lock:
            seen = self._failures.get(prompt, 0)
            self._failures[prompt] = seen + 1
        return seen < times

    @contextlib.contextmanager
    def _responding(self, *, stream: bool) -> Iterator[None]:
        """Counts the stream while it runs, and the client if it goes away."""
        if stream:
            with self._lock:
                self._active_streams += 1
        gone = False
        try:
            yield
        except _ClientGone:
            gone = True
        except _Stopping:
            pass
        finally:
            with self._disconnected:  # both counts change together: a waiter sees them consistent
                self._active_streams -= 1 if stream else 0
                if gone:
                    self._disconnects += 1
                    self._disconnected.notify_all()


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Serve in the foreground until Ctrl-C; print the `export` lines that point a client here."""
    parser = argparse.ArgumentParser(
        prog="fake_gloo.py", description="Run a local simulator of the Gloo AI API (OAuth + chat completions).",
        epilog="Scenario markers such as [[slow:0.2]], [[status:429]] or [[drop]] in a prompt pick a "
               "behaviour; the module docstring lists them all.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3002, help="port (default 3002; 0 picks a free one)")
    parser.add_argument("--delay", type=float, default=0.03, help="seconds between tokens (default 0.03)")
    parser.add_argument("--style", choices=["gloo", "openai"], default="gloo",
                        help="stream ending: gloo (no [DONE]) or openai (usage chunk and [DONE])")
    parser.add_argument("--expires-in", type=int, default=3600, help="token lifetime in seconds (default 3600)")
    parser.add_argument("--scenario", default="", help="markers applied to every request, e.g. '[[slow:0.2]]'")
    parser.add_argument("--verbose", action="store_true", help="log one line per request to stderr")
    parser.add_argument("--version", action="version", version="%(prog)s 1.0.0")  # gloo-stream's version
    args = parser.parse_args(argv)
    if args.delay < 0 or args.expires_in < 1 or not 0 <= args.port <= 65535:
        parser.error("--delay must be >= 0, --expires-in >= 1 and --port 0-65535")
    try:
        fake = FakeGloo(host=args.host, port=args.port, delay=args.delay, style=args.style,
                        expires_in=args.expires_in, scenario=args.scenario, quiet=not args.verbose)
        fake.start()
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"fake_gloo: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"fake_gloo: warning: listening on {args.host}, not only loopback", file=sys.stderr)
    lines = [f"# Simulated Gloo API at {fake.base_url} (Ctrl-C to stop). Point a client at it:"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in fake.env.items()]
    signal.signal(signal.SIGTERM, _interrupt)
    try:  # before the lines are out: a Ctrl-C right after them is a clean stop too
        print("\n".join(lines), flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
