"""Benchmark: the SSE decoder plus json.loads against json.loads alone (the floor).

20,000 realistic Gloo chunks (about 400 bytes each) are read in 1,400-byte pieces, as a
socket would deliver them. Runs are interleaved (decoder, floor, decoder, ...) and the best
of each is kept, so machine noise hits both sides alike; the ratio is what to compare.
The same decoder with its `data: X` fast path turned off (every block through the line rules)
runs in the same rounds: the difference is what the fast path is worth.
Then one 4 MiB and one 16 MiB `data:` line fed in 1 KiB reads: linear cost means about 4x.

    python bench/parser.py [--rounds 7] [--read-size 1400]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gloo_stream import SSEDecoder  # noqa: E402

WORDS = ("The resurrection stands at the centre of Christian hope , declaring that death does not have "
         "the final word and that God vindicates the crucified Jesus .").split()


def make_stream(count: int) -> tuple:
    payloads = []
    for i in range(count):
        word = WORDS[i % len(WORDS)]
        chunk = {
            "id": "chatcmpl-8f3a9c2b7d1e4f60a5b3c8d9e0f1a2b3",
            "object": "chat.completion.chunk",
            "created": 1763900000,
            "model": "gloo-openai-gpt-5-mini",
            "provider": "openai",
            "system_fingerprint": "fp_7a3c9d1e2b",
            "choices": [{"index": 0, "delta": {"content": " " + word}, "logprobs": None,
                         "finish_reason": None}],
            "usage": None,
            "service_tier": "default",
            "gloo": {"request_id": f"req_{i:08d}", "routing": "auto", "tradition": "not_faith_specific"},
        }
        payloads.append(json.dumps(chunk, separators=(",", ":")))
    body = "".join("data: " + p + "\n\n" for p in payloads).encode()
    return payloads, body


def pieces(body: bytes, size: int) -> list:
    return [body[i : i + size] for i in range(0, len(body), size)]


class LineRulesOnly(SSEDecoder):
    """The decoder with its fast path turned off."""

    def _data_blocks(self, block: bytes, events: list) -> bool:
        return False


def run_decoder(reads: list, decoder_class: type = SSEDecoder) -> int:
    decoder = decoder_class()
    loads = json.loads
    n = 0
    for data in reads:
        for event in decoder.feed(data):
            loads(event.data)
            n += 1
    return n


def run_floor(payloads: list) -> int:
    loads = json.loads
    n = 0
    for p in payloads:
        loads(p)
        n += 1
    return n


def best_interleaved(fns: list, rounds: int) -> list:
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def huge_line(size: int) -> float:
    decoder = SSEDecoder()
    piece = b"x" * 1024
    t = time.perf_counter()
    decoder.feed(b"data: ")
    for _ in range(size // 1024):
        decoder.feed(piece)
    events = decoder.feed(b"\n\n")
    elapsed = time.perf_counter() - t
    assert len(events[0].data) == size
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--read-size", type=int, default=1400)
    args = parser.parse_args()
    payloads, body = make_stream(args.chunks)
    reads = pieces(body, args.read_size)
    assert run_decoder(reads) == len(payloads) == run_decoder(reads, LineRulesOnly)
    decoder_s, floor_s, lines_s = best_interleaved(
        [lambda: run_decoder(reads), lambda: run_floor(payloads), lambda: run_decoder(reads, LineRulesOnly)],
        args.rounds)
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}")
    print(f"stream: {len(payloads)} chunks, {len(body) / len(payloads):.0f} bytes each on average, "
          f"{len(reads)} reads of {args.read_size} bytes")
    print(f"decoder + json.loads: {decoder_s * 1000:.1f} ms ({len(body) / decoder_s / 1e6:.0f} MB/s)")
    print(f"json.loads alone:     {floor_s * 1000:.1f} ms")
    print(f"ratio: {decoder_s / floor_s:.3f}x the floor (target <= 1.25x)")
    print(f"fast path off (line rules only) + json.loads: {lines_s * 1000:.1f} ms, "
          f"{lines_s / floor_s:.3f}x the floor; the fast path saves "
          f"{(lines_s - decoder_s) / len(payloads) * 1e6:.2f} us an event")
    small = min(huge_line(4 * 1024 * 1024) for _ in range(3))
    large = min(huge_line(16 * 1024 * 1024) for _ in range(3))
    print(f"one 4 MiB data line in 1 KiB reads:  {small * 1000:.1f} ms")
    print(f"one 16 MiB data line in 1 KiB reads: {large * 1000:.1f} ms ({large / small:.2f}x; linear is 4x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
