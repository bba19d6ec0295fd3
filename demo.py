#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The streaming tutorial's two examples, end to end, and a grounded answer with its sources.

1. Accumulate a whole answer and report its size, time and finish reason.
2. Render an answer token by token in the terminal (the typing effect).
3. A grounded answer (Gloo's RAG): backed by a publisher's content, its sources listed after it.

With Gloo credentials (GLOO_CLIENT_ID and GLOO_CLIENT_SECRET in the environment or .env)
it calls the real API. Without them, or with --offline, it starts the built-in simulator
(fake_gloo.py) in this process, so it runs anywhere, with no network.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import gloo_stream
from gloo_stream import GlooError, render_stream_to_terminal, stream_completion

FIRST_PROMPT = "What is the significance of the resurrection?"
SECOND_PROMPT = "Tell me about Christian discipleship."
GROUNDED_PROMPT = "What does the resurrection mean for Christian hope?"


def _start_simulator(delay: float):
    from fake_gloo import FakeGloo  # only needed offline

    fake = FakeGloo(delay=delay)
    fake.start()
    # The tutorial's functions read their configuration from the environment: point it at the simulator.
    os.environ.update(fake.env)
    os.environ.pop("GLOO_API_KEY", None)
    gloo_stream._reset_default_client()
    return fake


def grounded_example(publisher: str, sources_limit: int, *, out=None) -> dict:
    """Stream a grounded answer token by token, then list the sources it was grounded on."""
    out = out if out is not None else sys.stdout

    def show(delta: str) -> None:
        out.write(delta)
        out.flush()

    print(f"Prompt: {GROUNDED_PROMPT}", file=out)
    print("Response: ", end="", file=out, flush=True)
    result = stream_completion(GROUNDED_PROMPT, publisher=publisher, sources_limit=sources_limit, on_delta=show)
    print(file=out)
    if result["error"]:
        print(f"[error: {result['error']}]", file=out)
    sources = result["sources"]
    if sources:
        print("Sources:", file=out)
        for number, source in enumerate(sources, 1):
            print(f"  [{number}] {source.get('title')} - {source.get('url')}", file=out)
    elif result["sources_returned"]:
        print("[grounded on the publisher's content; no citation list came back]", file=out)
    else:
        print("[no sources found]", file=out)
    print(f"[{result['token_count']} tokens, finish_reason={result['finish_reason']}, "
          f"answered by {result['model'] or 'unknown model'}]", file=out, flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true", help="use the built-in simulator even if credentials exist")
    parser.add_argument("--delay", type=float, default=0.015,
                        help="simulator only: seconds between tokens (default 0.015)")
    parser.add_argument("--publisher", default=gloo_stream.DEFAULT_PUBLISHER,
                        help="the publisher a grounded answer draws on (default GlooGrounded)")
    parser.add_argument("--sources", type=int, default=3, help="how many sources to ground on, 1 to 10 (default 3)")
    args = parser.parse_args(argv)

    gloo_stream.load_dotenv()
    fake = None
    if args.offline or not gloo_stream.have_credentials():
        fake = _start_simulator(args.delay)
    try:
        if fake is not None:
            reason = "--offline given" if args.offline else "no Gloo credentials found"
            print(f"[{reason}: running on the built-in simulator, not the real API. For real answers put "
                  f"GLOO_CLIENT_ID and GLOO_CLIENT_SECRET in .env (see .env.example).]\n", flush=True)
        print("=== Example 1: accumulate the whole answer ===")
        result = stream_completion(FIRST_PROMPT)
        print(result["text"])
        print(f"\nReceived {result['token_count']} tokens in {result['duration_ms']} ms")
        print(f"Finish reason: {result['finish_reason']}")
        if result["error"]:
            print(f"Stream error: {result['error']}")
        print("\n=== Example 2: render tokens as they arrive ===")
        render_stream_to_terminal(SECOND_PROMPT)
        print(f"\n=== Example 3: a grounded answer from {args.publisher} ===")
        grounded_example(args.publisher, args.sources)
    except GlooError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`python demo.py | head`): stop quietly, as the CLI does.
        gloo_stream._silence(sys.stdout)
        return 0
    finally:
        if fake is not None:
            fake.stop()
    return 0


if __name__ == "__main__":
    code = main()
    gloo_stream._finish_output()  # a reader gone at the last moment: no traceback at exit
    sys.exit(code)
