#!/usr/bin/env python3
"""How the accumulator's cost grows with the number of tool-call argument deltas.

Feeds N deltas of one tool call (the shape a long function-call answer streams) and prints the
time per delta for N and 4N: a linear accumulator keeps the per-delta time flat (ratio ~4x for
4N), a quadratic one (string += on a value held in a dict) grows it with N.

    python bench/tool_calls.py [N]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gloo_stream import ChatAccumulator  # noqa: E402


def feed(n: int) -> float:
    """Seconds to fold `n` argument deltas into one tool call and read the merged call once."""
    chunks = [{"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": '{"verse": "John 3:16", "n": 1}'}}]}}]} for _ in range(n)]
    accumulator = ChatAccumulator()
    started = time.perf_counter()
    for chunk in chunks:
        accumulator.add(chunk)
    arguments = accumulator.tool_calls[0]["function"]["arguments"]
    elapsed = time.perf_counter() - started
    assert len(arguments) == 30 * n
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    small = min(feed(n) for _ in range(3))
    large = min(feed(4 * n) for _ in range(3))
    print(f"{n:>9,} deltas: {small * 1000:8.1f} ms ({small / n * 1e6:.2f} us a delta)")
    print(f"{4 * n:>9,} deltas: {large * 1000:8.1f} ms ({large / (4 * n) * 1e6:.2f} us a delta)")
    print(f"4x the deltas took {large / small:.2f}x the time (linear: ~4x)")


if __name__ == "__main__":
    main()
