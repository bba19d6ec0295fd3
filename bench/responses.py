"""Benchmark: the Responses API, through the relay against direct, and its decoding against chat's.

Two figures, each measured side by side in one run:

- time to first text of a Responses stream, direct to the simulator (a GlooClient) against
  through the relay (`POST /v1/responses` on proxy_server.py), both processes on loopback,
  interleaved request by request; p50 and the difference (the issue's target: within 3 ms);
- the library's cost per event, reading the same number of events from memory: a Responses
  stream (`ResponseStream`, typed events) against a chat stream (`ChatStream`, chunks), best of
  several interleaved rounds; the ratio (target: within 10%).

    python bench/responses.py [--requests 40] [--events 20000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from proxy import simulator_and_relay  # noqa: E402 - after the path is set

from gloo_stream import ChatStream, GlooClient, ResponseStream  # noqa: E402

MODEL = "gloo-openai-gpt-5-mini"


class _Memory:
    """A response whose body is in memory, read 1,400 bytes at a time (as a socket delivers it)."""

    status = 200
    headers = None

    def __init__(self, body: bytes) -> None:
        self._body, self._at = body, 0

    def read1(self, n: int) -> bytes:
        piece = self._body[self._at:self._at + 1400]
        self._at += len(piece)
        return piece

    def close(self) -> None:
        pass


def chat_body(count: int) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": MODEL, "provider": "openai",
             "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}]}
    line = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    end = dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
    return line * count + b"data: " + json.dumps(end).encode() + b"\n\n"


def responses_body(count: int) -> bytes:
    parts = [b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":'
             b'{"id":"resp_1","status":"in_progress"}}\n\n']
    for number in range(1, count + 1):
        event = {"type": "response.output_text.delta", "sequence_number": number, "item_id": "msg_1",
                 "output_index": 0, "content_index": 0, "delta": " word", "logprobs": []}
        parts.append(b"event: response.output_text.delta\ndata: " + json.dumps(event).encode() + b"\n\n")
    parts.append(b'event: response.completed\ndata: {"type":"response.completed","sequence_number":%d,'
                 b'"response":{"id":"resp_1","status":"completed"}}\n\n' % (count + 1))
    return b"".join(parts)


def decode_seconds(kind: type, body: bytes) -> float:
    started = time.perf_counter()
    stream = kind(_Memory(body))
    while stream.read_batch() is not None:
        pass
    assert stream.outcome.kind == "finished"
    return time.perf_counter() - started


def direct_ttft(client: GlooClient) -> float:
    started = time.perf_counter()
    with client.stream_response("Hi", model=MODEL) as stream:
        for _ in stream:
            first = time.perf_counter()
            break
    return (first - started) * 1000


def relay_ttft(conn: http.client.HTTPConnection) -> float:
    body = json.dumps({"model": MODEL, "input": "Hi", "stream": True})
    started = time.perf_counter()
    conn.request("POST", "/v1/responses", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    seen, first = b"", None
    while True:
        data = response.read1(65536)
        if not data:
            break
        if first is None:
            seen += data
            if b"response.output_text.delta" in seen:
                first = time.perf_counter()
    assert first is not None
    return (first - started) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="streams each way, interleaved")
    parser.add_argument("--events", type=int, default=20000, help="events per decoding round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    print(f"# bench/responses.py  {time.strftime('%Y-%m-%d %H:%M')}  nproc={os.cpu_count()} {platform.machine()} "
          f"Python {platform.python_version()}")

    with simulator_and_relay() as (sim_url, proxy_url, _):
        client = GlooClient(client_id="fake-client-id", client_secret="fake-client-secret",
                            token_url=sim_url + "/oauth2/token", api_url=sim_url + "/ai/v2/chat/completions")
        host, port = proxy_url.rsplit("/", 1)[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        direct_ttft(client), relay_ttft(conn)  # warm both: the token, the connections
        direct, relayed = [], []
        for _ in range(args.requests):
            direct.append(direct_ttft(client))
            relayed.append(relay_ttft(conn))
        d, r = statistics.median(direct), statistics.median(relayed)
        print("\n| time to first text (p50) | direct | through the relay | added by the relay |")
        print("|---|---:|---:|---:|")
        print(f"| {args.requests} Responses streams, interleaved | {d:.2f} ms | {r:.2f} ms | {r - d:+.2f} ms |")

    chat, responses = chat_body(args.events), responses_body(args.events)
    best_chat = best_responses = float("inf")
    for _ in range(args.rounds):
        best_chat = min(best_chat, decode_seconds(ChatStream, chat))
        best_responses = min(best_responses, decode_seconds(ResponseStream, responses))
    per_chat, per_responses = best_chat / args.events * 1e6, best_responses / args.events * 1e6
    print(f"\n| decoding {args.events} events from memory (best of {args.rounds}) | per event | ratio |")
    print("|---|---:|---:|")
    print(f"| ChatStream, chat chunks ({len(chat) // args.events} bytes an event) | {per_chat:.2f} µs | 1.00x |")
    print(f"| ResponseStream, typed events ({len(responses) // args.events} bytes an event) | "
          f"{per_responses:.2f} µs | {per_responses / per_chat:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
