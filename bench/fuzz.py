"""Fuzz: the decoder, the accumulator and the line parser on random input, for as long as asked.

The long run of the seeded properties in tests/test_sse.py, tests/test_chunks.py and
tests/test_faults.py (PropertyTests). Prints how many cases each property ran and every
violation found (the first few of each, with the input that shows it, as a repr).

    python bench/fuzz.py                     # 60 seconds, a random seed (printed)
    python bench/fuzz.py --seconds 600 --seed 1

Properties:
  decoder-splits      any bytes, fed whole / one byte at a time / at random splits with empty reads:
                      never raises, same events every time
  decoder-reference   SSE-shaped bytes: the same events as a literal reading of the spec
  decoder-limit       a max_event_bytes above every event changes nothing; with a small limit the
                      outcome (events, raised or not) is the same for every split [known bug: it is not]
  accumulator         JSON-shaped chunks with hostile leaves: add() never raises, result() serialises
  accumulator-floats  the same with non-finite floats (1e999, NaN) [known bug: ttft_ms raises]
  parse-line          any line: parse_sse_line returns None, "[DONE]" or a dict, never raises
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gloo_stream import (  # noqa: E402 - after the path is set
    ChatAccumulator,
    EventTooLargeError,
    SSEDecoder,
    extract_token_content,
    parse_sse_line,
)

try:
    from tests.test_sse import reference_decode  # the spec read literally
except ImportError:  # bench copied without the tests
    reference_decode = None

SSE_PIECES = [b"data: ", b"data:", b"data", b"event: x", b"id: 1", b"id: \x00", b"retry: 9", b"retry: x", b": c",
              b"\n", b"\r", b"\r\n", b"\n\n", b"\r\r", b"\xef\xbb\xbf", b"\xe2\x82", b"\xac", b"\xff", b"x" * 40,
              b'{"a": 1}', b" ", b"data: [DONE]", b"\x0b", b"\xc2\x85"]


def decode(data: bytes, sizes: list[int], limit: int | None = None) -> tuple[list, bool]:
    decoder = SSEDecoder(max_event_bytes=limit)
    events: list = []
    i = 0
    try:
        for size in sizes:
            if i >= len(data):
                break
            events += decoder.feed(data[i:i + size])
            i += size
        events += decoder.feed(data[i:]) + decoder.close()
    except EventTooLargeError:
        return events, True
    return events, False


def random_stream(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.3:
        return rng.randbytes(rng.randint(0, 4000))
    parts = []
    for _ in range(rng.randint(0, 300)):
        parts.append(rng.choice(SSE_PIECES) if rng.random() < 0.85 else rng.randbytes(rng.randint(1, 16)))
    return b"".join(parts)


def random_sizes(rng: random.Random, length: int) -> list[int]:
    return [rng.choice((0, 1, 1, 2, 3, 5, 8, 64, 1000)) for _ in range(length + 1)]


class Runner:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.cases: dict[str, int] = {}
        self.failures: dict[str, list[str]] = {}
        self.failure_counts: dict[str, int] = {}

    def fail(self, name: str, detail: str) -> None:
        self.failure_counts[name] = self.failure_counts.get(name, 0) + 1
        shown = self.failures.setdefault(name, [])
        if len(shown) < 3:
            shown.append(detail[:400])

    def count(self, name: str) -> None:
        self.cases[name] = self.cases.get(name, 0) + 1

    # -- properties -----------------------------------------------------------

    def decoder_splits(self) -> None:
        rng = self.rng
        data = random_stream(rng)
        try:
            whole = decode(data, [len(data)])
            if decode(data, [1] * len(data)) != whole or decode(data, random_sizes(rng, len(data))) != whole:
                self.fail("decoder-splits", repr(data))
        except Exception as exc:  # a raise is the violation
            self.fail("decoder-splits", f"{type(exc).__name__}: {exc} on {data!r}")
        self.count("decoder-splits")

    def decoder_reference(self) -> None:
        if reference_decode is None:
            return
        rng = self.rng
        data = b"".join(rng.choice(SSE_PIECES) for _ in range(rng.randint(0, 200)))
        if decode(data, random_sizes(rng, len(data)))[0] != reference_decode(data):
            self.fail("decoder-reference", repr(data))
        self.count("decoder-reference")

    def decoder_limit(self) -> None:
        rng = self.rng
        data = random_stream(rng)
        whole = decode(data, [len(data)])
        if decode(data, random_sizes(rng, len(data)), limit=len(data) + 16) != whole:
            self.fail("decoder-limit", f"a limit above the input changed the events: {data!r}")
        limit = rng.randint(1, 200)
        if decode(data, [len(data)], limit) != decode(data, [1] * len(data), limit):
            self.fail("decoder-limit", f"limit {limit}: whole and byte-by-byte disagree on {data[:120]!r}")
        self.count("decoder-limit")

    def _value(self, depth: int, leaves: list[Any]) -> Any:
        rng = self.rng
        keys = ["choices", "delta", "content", "finish_reason", "tool_calls", "index", "function", "arguments",
                "name", "id", "type", "usage", "model", "error", "provider", "code", "message", "role", "ttft_ms"]
        roll = rng.random()
        if depth > 6 or roll < 0.35:
            return rng.choice(leaves)
        if roll < 0.55:
            return [self._value(depth + 1, leaves) for _ in range(rng.randint(0, 4))]
        return {rng.choice(keys): self._value(depth + 1, leaves) for _ in range(rng.randint(0, 5))}

    def _accumulate(self, name: str, leaves: list[Any]) -> None:
        rng = self.rng
        accumulator = ChatAccumulator()
        chunk: Any = None
        try:
            for _ in range(rng.randint(1, 8)):
                chunk = self._value(0, leaves)
                if rng.random() < 0.3:
                    chunk = {"choices": [{"delta": {"content": self._value(5, leaves),
                                                    "tool_calls": [self._value(4, leaves)]},
                                          "finish_reason": self._value(6, leaves)}],
                             "error": self._value(5, leaves), "usage": self._value(5, leaves),
                             "ttft_ms": self._value(6, leaves)}
                accumulator.add(chunk)
                if not isinstance(extract_token_content(chunk), str):
                    self.fail(name, f"extract_token_content gave a non-string for {chunk!r}")
            json.dumps(accumulator.result().to_dict())
        except Exception as exc:
            self.fail(name, f"{type(exc).__name__}: {exc} on {json.dumps(chunk)[:300]}")
        self.count(name)

    def accumulator(self) -> None:
        self._accumulate("accumulator", [None, True, False, 0, -1, 2 ** 70, 1.5, -0.0, 1e308, "", "x", "stop",
                                         "\ud83d\ude4f", "\x00", [], {}, "x" * 1000])

    def accumulator_floats(self) -> None:
        self._accumulate("accumulator-floats", [None, 1.5, math.inf, -math.inf, math.nan, "x", [], {}])

    def parse_line(self) -> None:
        rng = self.rng
        raw = random_stream(rng)[:300]
        line = raw if rng.random() < 0.5 else raw.decode("utf-8", "replace")
        if rng.random() < 0.5:
            line = (b"data: " if isinstance(line, bytes) else "data: ") + line
        try:
            value = parse_sse_line(line)
            if not (value is None or value == "[DONE]" or isinstance(value, dict)):
                self.fail("parse-line", f"returned {value!r} for {line!r}")
        except Exception as exc:
            self.fail("parse-line", f"{type(exc).__name__}: {exc} on {line!r}")
        self.count("parse-line")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="the random seed (default: a new one, printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2 ** 32)
    runner = Runner(seed)
    properties: list[Callable[[], None]] = [runner.decoder_splits, runner.decoder_reference, runner.decoder_limit,
                                            runner.accumulator, runner.accumulator_floats, runner.parse_line]
    started = time.monotonic()
    while time.monotonic() - started < args.seconds:
        for prop in properties:
            prop()
    elapsed = time.monotonic() - started
    total = sum(runner.cases.values())
    print(f"seed {seed}: {total} cases in {elapsed:.1f} s")
    known = {"decoder-limit", "accumulator-floats"}
    new_failures = 0
    for name in ("decoder-splits", "decoder-reference", "decoder-limit", "accumulator", "accumulator-floats",
                 "parse-line"):
        failures = runner.failure_counts.get(name, 0)
        tag = " (known bug)" if failures and name in known else ""
        print(f"  {name:20s} {runner.cases.get(name, 0):8d} cases, {failures} violations{tag}")
        for detail in runner.failures.get(name, []):
            print(f"      {detail}")
        if name not in known:
            new_failures += failures
    return 1 if new_failures else 0


if __name__ == "__main__":
    sys.exit(main())
