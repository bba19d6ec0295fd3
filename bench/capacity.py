"""Capacity: how many slow streams one relay holds, what each costs, and how fast new ones start.

Three processes on loopback, so the relay's CPU is its own: an asyncio upstream (an
OpenAI-compatible event stream, fast enough never to be the bottleneck), the relay under test,
and an asyncio load generator. Each event carries the time the upstream sent it, so the client
measures each event's delay through the relay. When `aiohttp` can be imported (by this Python or
the one given with --aiohttp-python), the same load runs through a pooled aiohttp relay in the same
run, and the figures are printed side by side with their ratios. aiohttp is never a dependency of
the project: install it in a throwaway virtual environment to compare.

    python bench/capacity.py                                  # the ladder: 300, 1000, 2000 streams at 5 events/s
    python bench/capacity.py --levels 4000 --rate 1           # 4,000 streams at 1 event/s
    python bench/capacity.py --starts 160                     # stream starts: 160 new streams a second
    python bench/capacity.py --aiohttp-python /tmp/venv/bin/python

Figures per level: streams completed, event delay p50/p99 in the steady state (from a second
after the last stream began until the first one ended; its length in brackets) and p99 over every
event (the ramp and the endings too), relay CPU per 1,000 events, relay memory per stream (RSS at
the peak less RSS idle), and, for starts, time to first token p50/p99 and CPU per stream start.
Everything binds 127.0.0.1 and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
KEY = "bench-upstream-key"

from proxy import rss_kib  # noqa: E402 - bench/proxy.py, beside this file

# ---------------------------------------------------------------------------
# The upstream and the reference relay, written to files and run as their own processes
# ---------------------------------------------------------------------------

UPSTREAM = r'''
import asyncio, json, sys, time

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = json.loads(await reader.readexactly(length)) if length else {}
            prompt = body.get("messages", [{}])[-1].get("content", "")
            events, rate = (int(x) for x in prompt.split()[:2])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            interval = 1.0 / rate if rate else 0.0
            start = time.monotonic()
            for i in range(events):
                if interval:
                    delay = start + i * interval - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "bench",
                         "choices": [{"index": 0, "delta": {"content": "word%d @%.6f " % (i, time.time())},
                                      "finish_reason": None}]}
                data = b"data: " + json.dumps(chunk).encode() + b"\n\n"
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
            end = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "bench",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            data = b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''

AIOHTTP_RELAY = r'''
import asyncio, sys
import aiohttp
from aiohttp import web

UPSTREAM = sys.argv[1]

async def relay(request):
    body = await request.read()
    session = request.app["session"]
    async with session.post(UPSTREAM, data=body, headers={"Content-Type": "application/json",
                            "Authorization": "Bearer key"}) as upstream:
        response = web.StreamResponse(status=upstream.status, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        async for data in upstream.content.iter_any():
            await response.write(data)
        await response.write_eof()
        return response

async def main():
    app = web.Application()
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    app.router.add_post("/api/stream", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''


def start(cmd: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """Start a server process that prints its port on its first line."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = process.stdout.readline() if process.stdout else ""
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError(f"{cmd[0]} did not start")
    return process, int(line)


def start_proxy(upstream_port: int) -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GLOO_", "PROXY_"))}
    env.update(GLOO_API_KEY=KEY, GLOO_API_URL=f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
               PROXY_MAX_STREAMS="20000", PROXY_MAX_CONNECTIONS="20000", PROXY_MAX_CONNECTIONS_PER_CLIENT="20000",
               PROXY_RATE_LIMIT_PER_MINUTE="0",
               PROXY_LOG_FORMAT="text", NO_PROXY="*")
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "proxy_server.py"), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tempfile.gettempdir())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if sock.recv(65536).startswith(b"HTTP/1.1 200"):
                    return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("proxy_server.py did not start")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# The load: asyncio clients, one connection per stream
# ---------------------------------------------------------------------------


class Stream:
    __slots__ = ("ok", "events", "delays", "ttft", "error")

    def __init__(self) -> None:
        self.ok = False
        self.events = 0
        self.delays: list[tuple[float, float]] = []  # (arrival, monotonic clock; delay since the upstream sent it)
        self.ttft: float | None = None
        self.error = ""


async def one_stream(port: int, events: int, rate: float, timeout: float) -> Stream:
    result = Stream()
    body = json.dumps({"messages": [{"role": "user", "content": f"{events} {rate:g}"}], "model": "bench"}).encode()
    request = (b"POST /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    sent = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        result.error = f"connect: {type(exc).__name__}"
        return result
    try:
        writer.write(request)
        deadline = time.monotonic() + timeout
        buffer = b""
        while True:
            data = await asyncio.wait_for(reader.read(65536), max(0.1, deadline - time.monotonic()))
            if not data:
                break
            now_wall, now = time.time(), time.monotonic()
            buffer += data
            while True:
                at = buffer.find(b" @")
                if at < 0:
                    break
                end = buffer.find(b" ", at + 2)
                if end < 0:
                    break
                stamp = float(buffer[at + 2:end])
                buffer = buffer[end:]
                result.events += 1
                if result.ttft is None:
                    result.ttft = now - sent
                result.delays.append((now, now_wall - stamp))
            if b'"finish_reason": "stop"' in buffer or b'"finish_reason":"stop"' in buffer:
                result.ok = result.events == events
                break
            buffer = buffer[-256:]
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        result.error = type(exc).__name__
    finally:
        writer.close()
    return result


async def hold(port: int, count: int, events: int, rate: float, ramp: float, timeout: float) -> list[Stream]:
    """`count` concurrent streams, started evenly over `ramp` seconds."""
    tasks = []
    for _ in range(count):
        tasks.append(asyncio.ensure_future(one_stream(port, events, rate, timeout)))
        if ramp:
            await asyncio.sleep(ramp / count)
    return list(await asyncio.gather(*tasks))


async def starts(port: int, per_second: float, seconds: float, timeout: float) -> list[Stream]:
    """New short streams at a steady rate: each is 3 events, sent at once."""
    tasks = []
    begin = time.monotonic()
    total = int(per_second * seconds)
    for i in range(total):
        delay = begin + i / per_second - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one_stream(port, 3, 0, timeout)))
    return list(await asyncio.gather(*tasks))


def load(mode: str, port: int, *args: Any) -> list[Stream]:
    """Run the load in a child process, so its CPU is not the relay's nor this one's."""
    code = f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); " \
           f"import capacity; capacity._child({mode!r}, {port}, {args!r})"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    streams = []
    for row in json.loads(output):
        stream = Stream()
        stream.ok, stream.events, stream.delays, stream.ttft, stream.error = row
        streams.append(stream)
    return streams


def _child(mode: str, port: int, args: tuple) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    coroutine = hold(port, *args) if mode == "hold" else starts(port, *args)
    streams = asyncio.run(coroutine)
    print(json.dumps([[s.ok, s.events, s.delays, s.ttft, s.error] for s in streams]))


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_hold(name: str, pid: int, port: int, count: int, rate: float, duration: float) -> dict[str, Any]:
    events = max(1, int(rate * duration))
    ramp = min(20.0, max(1.0, count / 400))
    idle_rss = rss_kib(pid)
    cpu_before = cpu_seconds(pid)
    peak = [idle_rss]

    import threading

    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            try:
                peak[0] = max(peak[0], rss_kib(pid))
            except OSError:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    streams = load("hold", port, count, events, rate, ramp, duration + ramp + 60)
    stop.set()
    cpu = cpu_seconds(pid) - cpu_before
    # Steady state: from a second after the last stream began until the first one ended.
    began = [s.delays[0][0] for s in streams if s.delays]
    ended = [s.delays[-1][0] for s in streams if s.delays]
    steady_from, steady_to = (max(began) + 1.0, min(ended)) if began else (0.0, 0.0)
    delays = [d for s in streams for at, d in s.delays if steady_from <= at <= steady_to]
    every = [d for s in streams for _, d in s.delays]
    relayed = sum(s.events for s in streams)
    errors: dict[str, int] = {}
    for s in streams:
        if not s.ok:
            errors[s.error or "incomplete"] = errors.get(s.error or "incomplete", 0) + 1
    return {
        "relay": name, "streams": count, "completed": sum(s.ok for s in streams),
        "p50_ms": percentile(delays, 0.5) * 1000, "p99_ms": percentile(delays, 0.99) * 1000,
        "all_p99_ms": percentile(every, 0.99) * 1000, "steady_s": max(0.0, steady_to - steady_from),
        "cpu_per_1k": cpu / max(1, relayed) * 1000, "kib_per_stream": (peak[0] - idle_rss) / count,
        "errors": errors,
    }


def measure_starts(name: str, pid: int, port: int, per_second: float, seconds: float) -> dict[str, Any]:
    cpu_before = cpu_seconds(pid)
    streams = load("starts", port, per_second, seconds, 30.0)
    cpu = cpu_seconds(pid) - cpu_before
    ttfts = [s.ttft for s in streams if s.ttft is not None]
    return {"relay": name, "streams": len(streams), "completed": sum(s.ok for s in streams),
            "ttft_p50_ms": percentile(ttfts, 0.5) * 1000, "ttft_p99_ms": percentile(ttfts, 0.99) * 1000,
            "cpu_ms_per_start": cpu / max(1, len(streams)) * 1000}


def find_aiohttp(given: str | None) -> str | None:
    """A Python that can import aiohttp: the one given, else this one; None when neither can."""
    python = shutil.which(given) or given if given else sys.executable
    if python and subprocess.run([python, "-c", "import aiohttp"], capture_output=True).returncode == 0:
        return python
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=textwrap.dedent(__doc__.split("\n", 2)[2]))
    parser.add_argument("--levels", default="300,1000,2000", help="concurrent streams per level (comma list)")
    parser.add_argument("--rate", type=float, default=5.0, help="events a second in each stream")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds each stream lasts")
    parser.add_argument("--starts", type=float, default=0.0, help="also measure this many new streams a second")
    parser.add_argument("--starts-seconds", type=float, default=10.0)
    parser.add_argument("--aiohttp-python", help="a Python that can import aiohttp (for the reference relay)")
    parser.add_argument("--no-hold", action="store_true", help="only the stream-start measurement")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the children inherit it

    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; {args.rate:g} events/s, {args.duration:g} s streams")
    with tempfile.TemporaryDirectory() as folder:
        upstream_file = os.path.join(folder, "upstream.py")
        with open(upstream_file, "w") as handle:
            handle.write(UPSTREAM)
        upstream, upstream_port = start([sys.executable, upstream_file])
        relays: list[tuple[str, subprocess.Popen, int]] = []
        try:
            proxy, proxy_port = start_proxy(upstream_port)
            relays.append(("proxy_server.py", proxy, proxy_port))
            aiohttp_python = find_aiohttp(args.aiohttp_python)
            if aiohttp_python:
                relay_file = os.path.join(folder, "aiohttp_relay.py")
                with open(relay_file, "w") as handle:
                    handle.write(AIOHTTP_RELAY)
                process, port = start([aiohttp_python, relay_file,
                                       f"http://127.0.0.1:{upstream_port}/v1/chat/completions"])
                relays.append(("aiohttp", process, port))
            else:
                print("# aiohttp not found: no reference relay (see --aiohttp-python)")
            for _, _, port in relays:  # warm both: the first stream pays for connections
                load("starts", port, 20, 0.5, 10.0)
            if not args.no_hold:
                print("| relay | streams | completed | steady event delay p50 | p99 | p99 of every event "
                      "| relay CPU per 1k events | memory per stream | errors |")
                print("|---|---|---|---|---|---|---|---|---|")
                for level in [int(x) for x in args.levels.split(",") if x]:
                    rows = []
                    for name, process, port in relays:
                        row = measure_hold(name, process.pid, port, level, args.rate, args.duration)
                        rows.append(row)
                        print(f"| {name} | {level} | {row['completed']}/{level} | {row['p50_ms']:.1f} ms "
                              f"| {row['p99_ms']:.1f} ms ({row['steady_s']:.0f} s) | {row['all_p99_ms']:.1f} ms "
                              f"| {row['cpu_per_1k']:.3f} s "
                              f"| {row['kib_per_stream']:.1f} KiB | {row['errors'] or '-'} |", flush=True)
                    if len(rows) == 2 and rows[1]["cpu_per_1k"]:
                        print(f"| ratio | {level} | | | {rows[0]['p99_ms'] / max(rows[1]['p99_ms'], 1e-9):.2f}x "
                              f"| {rows[0]['all_p99_ms'] / max(rows[1]['all_p99_ms'], 1e-9):.2f}x "
                              f"| {rows[0]['cpu_per_1k'] / rows[1]['cpu_per_1k']:.2f}x "
                              f"| {rows[0]['kib_per_stream'] / max(rows[1]['kib_per_stream'], 1e-9):.2f}x | |",
                              flush=True)
            if args.starts:
                print()
                print("| relay | new streams a second | completed | TTFT p50 | TTFT p99 | relay CPU per start |")
                print("|---|---|---|---|---|---|")
                for name, process, port in relays:
                    row = measure_starts(name, process.pid, port, args.starts, args.starts_seconds)
                    print(f"| {name} | {args.starts:g} | {row['completed']}/{row['streams']} "
                          f"| {row['ttft_p50_ms']:.1f} ms | {row['ttft_p99_ms']:.1f} ms "
                          f"| {row['cpu_ms_per_start']:.2f} ms |", flush=True)
        finally:
            for _, process, _ in relays:
                process.terminate()
            upstream.terminate()
            for _, process, _ in relays:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
            upstream.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
