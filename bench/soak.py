"""Soak: the relay and the client under abuse at full scale, with figures.

The long or large versions of tests/test_abuse.py and tests/test_faults.py (which run scaled
down so the suite stays fast). The proxy runs as a subprocess; its threads, memory (VmRSS, and
VmHWM for the peak) and open files are read from /proc. Everything is on loopback, every
section is bounded in time, and every server it starts is stopped at the end.

    python bench/soak.py                       # every section (about 1-2 minutes)
    python bench/soak.py --quick               # smaller counts, shorter timeouts
    python bench/soak.py slowloris idle        # some sections

Sections: slowloris, idle, streams, rounds, endless, faults.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import threading
import time
import tracemalloc
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.abuse_support import (  # noqa: E402 - after the path is set
    SSE_HEAD,
    Crowd,
    CrowdUpstream,
    ProxyProcess,
    ScriptedServer,
    answer_events,
    chunk_event,
    endless_line,
    free_port,
    not_tls,
    reply,
    stream_request,
    token_reply,
    trickle,
)

MiB = 1024 * 1024


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"min {min(values):.2f} s, median {statistics.median(values):.2f} s, max {max(values):.2f} s"


class Sampler:
    """Peak threads and RSS of a process, sampled while a crowd is pumped."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self.proxy = proxy
        self.threads = proxy.threads()
        self.rss = proxy.rss_kib()

    def __call__(self) -> None:
        try:
            self.threads = max(self.threads, self.proxy.threads())
            self.rss = max(self.rss, self.proxy.rss_kib())
        except OSError:
            pass


def proxy_env(upstream: ScriptedServer, **settings: str) -> dict[str, str]:
    env = {"GLOO_API_KEY": "soak-upstream-key-0001", "GLOO_API_URL": upstream.url(),
           "PROXY_RATE_LIMIT_PER_MINUTE": "0", "PROXY_MAX_STREAMS": "5000", "PROXY_DRAIN_SECONDS": "1",
           "PROXY_LOG_FORMAT": "json", "PROXY_MAX_CONNECTIONS_PER_CLIENT": "20000"}
    env.update(settings)
    return env


def get(address: tuple[str, int], path: str) -> tuple[int, float]:
    started = time.monotonic()
    conn = http.client.HTTPConnection(*address, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        conn.close()


def post_stream(address: tuple[str, int], prompt: str = "Hi") -> tuple[int, float, bytes]:
    started = time.monotonic()
    conn = http.client.HTTPConnection(*address, timeout=30)
    try:
        conn.request("POST", "/api/stream", body=json.dumps({"messages": [{"role": "user", "content": prompt}]}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
        return response.status, time.monotonic() - started, body
    finally:
        conn.close()


def baseline(proxy: ProxyProcess) -> str:
    return f"threads {proxy.threads()}, RSS {mib(proxy.rss_kib())}, open files {proxy.open_files()}"


# -- sections -------------------------------------------------------------------


def slowloris(args: argparse.Namespace) -> None:
    count, timeout = (100, 2.0) if args.quick else (500, args.request_timeout)
    upstream = ScriptedServer(CrowdUpstream()).start()
    proxy = ProxyProcess(proxy_env(upstream, PROXY_REQUEST_TIMEOUT_SECONDS=str(timeout)))
    try:
        before = baseline(proxy)
        sampler = Sampler(proxy)
        crowd = Crowd(proxy.address, count)
        crowd.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        served: list[tuple[int, float]] = []
        stop = threading.Event()

        def real_traffic() -> None:
            while not stop.is_set():
                served.append(get(proxy.address, "/health"))
                status, seconds, _ = post_stream(proxy.address)
                served.append((status, seconds))
                stop.wait(0.2)

        worker = threading.Thread(target=real_traffic)
        worker.start()
        started = time.monotonic()
        for byte in b"X-Slow: " + b"a" * 1000:  # one header byte a second
            if not crowd.open or time.monotonic() - started > timeout + 30:
                break
            crowd.send(bytes([byte]))
            crowd.pump(1.0, tick=sampler)
        stop.set()
        worker.join(30)
        cut = [m.closed_at - m.opened_at for m in crowd.members if m.closed_at is not None]
        answered_408 = sum(1 for m in crowd.members if m.received.startswith(b"HTTP/1.1 408 "))
        crowd.close()
        after_threads = proxy.wait_threads(1, 10)
        statuses = sorted({status for status, _ in served})
        print(f"slowloris: {count} connections, request line then 1 header byte/s, request timeout {timeout:g} s")
        print(f"  cut off: {len(cut)} of {count} ({answered_408} with a 408, the rest closed); {spread(cut)}")
        print(f"  real requests meanwhile: {len(served)} answered, statuses {statuses}, "
              f"latency p50 {statistics.median([s for _, s in served]) * 1000:.1f} ms, "
              f"max {max(s for _, s in served) * 1000:.1f} ms")
        print(f"  proxy before: {before}; peak: threads {sampler.threads}, RSS {mib(sampler.rss)}; "
              f"after: threads {after_threads}, RSS {mib(proxy.rss_kib())}, open files {proxy.open_files()}")
    finally:
        proxy.stop()
        upstream.stop()


def idle(args: argparse.Namespace) -> None:
    count, timeout = (500, 2.0) if args.quick else (2000, args.request_timeout)
    upstream = ScriptedServer(CrowdUpstream()).start()
    proxy = ProxyProcess(proxy_env(upstream, PROXY_REQUEST_TIMEOUT_SECONDS=str(timeout)))
    try:
        before = baseline(proxy)
        sampler = Sampler(proxy)
        started = time.monotonic()
        crowd = Crowd(proxy.address, count)
        crowd.pump(1.0, tick=sampler)
        health = get(proxy.address, "/health")
        crowd.pump(timeout + 30, until=lambda: crowd.closed_count == count, tick=sampler)
        cut = [m.closed_at - m.opened_at for m in crowd.members if m.closed_at is not None]
        all_closed = time.monotonic() - started
        crowd.close()
        status, seconds, body = post_stream(proxy.address)
        after_threads = proxy.wait_threads(1, 10)
        print(f"idle: {count} connections that send nothing, request timeout {timeout:g} s")
        print(f"  closed by the proxy: {len(cut)} of {count}; {spread(cut)}; all gone {all_closed:.2f} s after "
              f"the first connect")
        print(f"  /health while they were open: {health[0]} in {health[1] * 1000:.1f} ms; a stream afterwards: "
              f"{status} in {seconds * 1000:.1f} ms")
        print(f"  proxy before: {before}; peak: threads {sampler.threads}, RSS {mib(sampler.rss)}; "
              f"after: threads {after_threads}, RSS {mib(proxy.rss_kib())}, open files {proxy.open_files()}")
    finally:
        proxy.stop()
        upstream.stop()


def run_streams(proxy: ProxyProcess, handler: CrowdUpstream, count: int) -> tuple[int, float, Sampler]:
    handler.target = count
    handler.most_open = 0
    sampler = Sampler(proxy)
    started = time.monotonic()
    crowd = Crowd(proxy.address, count)
    crowd.send(stream_request("/api/stream", "[[together]]"))
    crowd.pump(120, until=lambda: crowd.closed_count == count, tick=sampler)
    seconds = time.monotonic() - started
    finished = sum(1 for m in crowd.members if m.received.startswith(b"HTTP/1.1 200 ")
                   and b'"finish_reason": "stop"' in m.received and m.received.endswith(b"0\r\n\r\n"))
    crowd.close()
    return finished, seconds, sampler


def streams(args: argparse.Namespace) -> None:
    count = 200 if args.quick else 1000
    handler = CrowdUpstream()
    upstream = ScriptedServer(handler).start()
    proxy = ProxyProcess(proxy_env(upstream, PROXY_WRITE_TIMEOUT_SECONDS=str(args.write_timeout)))
    try:
        before = baseline(proxy)
        finished, seconds, sampler = run_streams(proxy, handler, count)
        after_threads = proxy.wait_threads(1, 10)
        print(f"streams: {count} concurrent streams, each held open until all {count} were open at once")
        print(f"  completed {finished} of {count} (most open at once upstream: {handler.most_open}) in {seconds:.2f} s")
        print(f"  proxy before: {before}; peak: threads {sampler.threads}, RSS {mib(sampler.rss)} "
              f"({(sampler.rss - proxy.rss_kib()) / max(1, count):.0f} KiB per stream over idle); "
              f"after: threads {after_threads}, RSS {mib(proxy.rss_kib())}")
        # A client that stops reading: SO_RCVBUF 4 KiB, never a recv.
        import socket
        gone_before = upstream.gone
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(proxy.address)
        started = time.monotonic()
        slow.sendall(stream_request("/api/stream", "[[flood]]"))
        closed = upstream.wait_gone(gone_before + 1, args.write_timeout + 30)
        cut_after = time.monotonic() - started
        slow.close()
        outcome = [r.get("outcome") for r in proxy.log_records() if r.get("path") == "/api/stream"][-1:]
        print(f"  a client that stops reading: upstream closed {closed} after {cut_after:.2f} s "
              f"(write timeout {args.write_timeout:g} s), logged outcome {outcome}; "
              f"threads after {proxy.wait_threads(1, 10)}, open files {proxy.open_files()}")
    finally:
        proxy.stop()
        upstream.stop()


def rounds(args: argparse.Namespace) -> None:
    count, repeat = (200, 3) if args.quick else (1000, args.rounds)
    handler = CrowdUpstream()
    upstream = ScriptedServer(handler).start()
    proxy = ProxyProcess(proxy_env(upstream))
    try:
        print(f"rounds: {repeat} rounds of {count} concurrent streams; after each: threads, RSS, open files "
              f"(before: {baseline(proxy)})")
        for index in range(repeat):
            finished, seconds, sampler = run_streams(proxy, handler, count)
            threads = proxy.wait_threads(1, 10)
            print(f"  round {index + 1}: {finished}/{count} completed in {seconds:.2f} s, peak threads "
                  f"{sampler.threads}, peak RSS {mib(sampler.rss)}; after: threads {threads}, RSS "
                  f"{mib(proxy.rss_kib())}, open files {proxy.open_files()}")
    finally:
        proxy.stop()
        upstream.stop()


def endless(args: argparse.Namespace) -> None:
    cap = (64 if args.quick else 512) * MiB
    sent: list[int] = []
    upstream = ScriptedServer(endless_line(sent, cap)).start()
    proxy = ProxyProcess(proxy_env(upstream))
    try:
        before_rss, before_hwm = proxy.rss_kib(), proxy.peak_rss_kib()
        started = time.monotonic()
        status, seconds, body = post_stream(proxy.address)
        upstream.wait_gone(1, 10)
        error = [line for line in body.decode("utf-8", "replace").split("\n\n") if '"error"' in line][-1:]
        print(f"endless data line (the upstream offers {cap // MiB} MiB in one line), default 1 MiB limit:")
        print(f"  relay: {status}, error event {error[0][:90] if error else None!r} after {seconds:.2f} s; the "
              f"upstream sent {sent[0] / MiB:.1f} MiB before the relay closed it; proxy RSS {mib(before_rss)} "
              f"before, peak {mib(proxy.peak_rss_kib())} (was {mib(before_hwm)}), {mib(proxy.rss_kib())} after")
    finally:
        proxy.stop()
        upstream.stop()
    from gloo_stream import EventTooLargeError, GlooClient
    sent.clear()
    upstream = ScriptedServer(endless_line(sent, cap)).start()
    try:
        client = GlooClient(api_key="soak-upstream-key-0001", api_url=upstream.url())
        tracemalloc.start()
        started = time.monotonic()
        try:
            for _ in client.stream("Hi"):
                pass
            outcome = "no error"
        except EventTooLargeError as exc:
            outcome = f"EventTooLargeError({exc})"
        seconds = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        upstream.wait_gone(1, 10)
        print(f"  client: {outcome} after {seconds:.2f} s; the server sent {sent[0] / MiB:.1f} MiB; "
              f"peak Python memory during the call {peak / MiB:.1f} MiB (tracemalloc)")
    finally:
        upstream.stop()


def faults(args: argparse.Namespace) -> None:
    """Time from the call to the typed error (or result with `error`) for each fault, client side."""
    from gloo_stream import GlooClient, GlooError, TokenCache

    trickle_body = b"".join(answer_events([" is", " a", " gift"] * 20))
    cases: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
        ("connection refused", None, {}),
        ("reset (RST) after the headers", reply(SSE_HEAD, rst=True), {}),
        ("reset (RST) mid-event", reply(SSE_HEAD + chunk_event("Hello") + b'data: {"cho', rst=True), {}),
        ("stall before the headers", reply(hold=30), {"connect_timeout": 2.0}),
        ("stall mid-stream", reply(SSE_HEAD + chunk_event("Hello"), hold=30), {"read_timeout": 2.0}),
        ("trickle 1 byte/s, deadline 3 s", trickle(SSE_HEAD + chunk_event("Grace"), trickle_body, 1.0, 30),
         {"deadline": 3.0}),
        ("trickled headers 1 byte/s, deadline 3 s", trickle(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 100, 1.0, 12),
         {"deadline": 3.0}),
        ("TLS failure (plain TCP as https)", not_tls, {"https": True}),
        ("200 text/html", reply(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n\r\n<html>"), {}),
        ("random bytes as an event stream", reply(SSE_HEAD + os.urandom(256 * 1024)), {}),
        ("an event nested 100,000 deep", reply(SSE_HEAD + b"data: " + b"[" * 100000 + b"]" * 100000 + b"\n\n"), {}),
        ("ttft_ms: 1e999", reply(SSE_HEAD + b'data: {"ttft_ms": 1e999, "choices": []}\n\n'), {}),
    ]
    print("faults, client side (GlooClient, max_retries 1, backoff 0.1 s): time to the typed error")
    for name, handler, options in cases:
        server = None
        if handler is None:
            url = f"http://127.0.0.1:{free_port()}/x"
        else:
            server = ScriptedServer(handler).start()
            url = server.url(scheme="https" if options.pop("https", False) else "http")
        settings: dict[str, Any] = dict(api_key="soak-upstream-key-0001", api_url=url, max_retries=1,
                                        backoff_base=0.1, connect_timeout=5.0, read_timeout=5.0)
        settings.update(options)
        started = time.monotonic()
        try:
            result = GlooClient(**settings).complete("Hi")
            outcome = f"result.error={result.error!r:.70} text={result.text!r:.20}"
        except GlooError as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:70]}"
        except Exception as exc:  # an untyped error is a finding: show it
            outcome = f"UNTYPED {type(exc).__name__}: {str(exc)[:60]}"
        print(f"  {name:42s} {time.monotonic() - started:6.2f} s  {outcome}")
        if server is not None:
            server.stop()
    token_cases = [
        ("token endpoint refused", None),
        ("token endpoint stalled (timeout 2 s)", reply(hold=30)),
        ("token endpoint 500", token_reply(500, b'{"error": "server_error"}')),
        ("token endpoint HTML", token_reply(200, b"<html>down</html>", "text/html")),
        ("token nested 50,000 deep", token_reply(200, b"[" * 50000)),
    ]
    print("faults, token endpoint (TokenCache, timeout 2 s):")
    for name, handler in token_cases:
        server = ScriptedServer(handler).start() if handler is not None else None
        url = server.url("/oauth2/token") if server else f"http://127.0.0.1:{free_port()}/oauth2/token"
        started = time.monotonic()
        try:
            TokenCache(client_id="soak", client_secret="soak-secret-0001", token_url=url, timeout=2.0).get()
            outcome = "a token"
        except GlooError as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:70]}"
        except Exception as exc:
            outcome = f"UNTYPED {type(exc).__name__}: {str(exc)[:60]}"
        print(f"  {name:42s} {time.monotonic() - started:6.2f} s  {outcome}")
        if server is not None:
            server.stop()
    # Concurrent callers behind a stalled token endpoint.
    server = ScriptedServer(reply(hold=30)).start()
    cache = TokenCache(client_id="soak", client_secret="soak-secret-0001", token_url=server.url("/t"), timeout=1.0)
    started = time.monotonic()
    finished: list[float] = []

    def call() -> None:
        try:
            cache.get()
        except GlooError:
            finished.append(time.monotonic() - started)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    server.stop()
    print(f"  8 concurrent callers, token endpoint stalled, timeout 1 s: failed after "
          f"{', '.join(f'{s:.1f}' for s in sorted(finished))} s")


SECTIONS = {"slowloris": slowloris, "idle": idle, "streams": streams, "rounds": rounds, "endless": endless,
            "faults": faults}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help=f"sections to run: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller counts and timeouts (a smoke run)")
    parser.add_argument("--request-timeout", type=float, default=5.0,
                        help="PROXY_REQUEST_TIMEOUT_SECONDS for slowloris and idle (default 5)")
    parser.add_argument("--write-timeout", type=float, default=2.0,
                        help="PROXY_WRITE_TIMEOUT_SECONDS for the client that stops reading (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of streams in the rounds section")
    args = parser.parse_args(argv)
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")
    for name in args.sections or list(SECTIONS):
        started = time.monotonic()
        SECTIONS[name](args)
        print(f"  ({name}: {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
