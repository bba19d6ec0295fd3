"""Benchmark: what the relay adds, direct to the simulator against through the proxy, in one run.

The simulator and the proxy each run in their own process on loopback (as in production),
and this process is the client. Figures printed:

- added latency per event: the simulator stamps each event with its send time (`[[stamp]]`);
  the client notes when it arrives; p50/p99 of (arrival - send), through the proxy minus direct;
- added time to first token (p50 over many requests);
- a burst of 20,000 events sent as fast as possible: total time through the proxy / direct;
- 1,000 concurrent slow streams through the proxy: how many complete, and the proxy's memory.

    python bench/proxy.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAMP = re.compile(rb'"sent_ns": ?(\d+)')
CONTENT = re.compile(rb'"content": ?"[^"]')


# -- processes ----------------------------------------------------------------


def start(cmd: list[str], pattern: str, env: dict[str, str], stream: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    source = proc.stdout if stream == "stdout" else proc.stderr
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = source.readline()
        match = re.search(pattern, line)
        if match:
            return proc, match.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"could not start {' '.join(cmd)}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


# -- a raw HTTP client that notes when each event arrives ------------------------


class Target:
    def __init__(self, base: str, path: str, token: str | None = None) -> None:
        parts = urllib.parse.urlsplit(base)
        self.host, self.port = parts.hostname, parts.port
        self.path = path
        self.token = token

    def request(self, prompt: str) -> bytes:
        body = json.dumps({"messages": [{"role": "user", "content": prompt}], "stream": True,
                           "auto_routing": True}).encode()
        auth = f"Authorization: Bearer {self.token}\r\n" if self.token else ""
        return (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"{auth}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def timed_stream(target: Target, prompt: str) -> tuple[float, list[int], float, float]:
    """(time to first content event, [arrival - send in ns for stamped events], total seconds, start)."""
    sock = socket.create_connection((target.host, target.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = time.monotonic()
    sock.sendall(target.request(prompt))
    buffer = b""
    scanned = 0
    first: float | None = None
    delays: list[int] = []
    while True:
        data = sock.recv(65536)
        now_ns = time.time_ns()
        if not data:
            break
        buffer += data
        end = buffer.rfind(b"\n\n")
        if end > scanned:
            window = buffer[scanned:end]
            delays.extend(now_ns - int(m.group(1)) for m in STAMP.finditer(window))
            if first is None and CONTENT.search(window):
                first = time.monotonic() - started
            scanned = end
    sock.close()
    total = time.monotonic() - started
    return (first if first is not None else total), delays, total, started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def concurrent_streams(target: Target, prompt: str, count: int, proxy_pid: int) -> tuple[int, float, int, int]:
    """Open `count` streams at once; (completed, seconds, peak RSS KiB, peak threads)."""
    selector = selectors.DefaultSelector()
    request = target.request(prompt)
    states = {}
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((target.host, target.port))
        states[sock] = {"out": request, "in": b"", "done": False}
        selector.register(sock, selectors.EVENT_WRITE)
    started = time.monotonic()
    completed = 0
    open_count = count
    peak_rss = peak_threads = 0
    next_sample = 0.0
    while open_count and time.monotonic() - started < 120:
        for key, mask in selector.select(timeout=0.2):
            sock = key.fileobj
            state = states[sock]
            try:
                if mask & selectors.EVENT_WRITE:
                    sent = sock.send(state["out"])
                    state["out"] = state["out"][sent:]
                    if not state["out"]:
                        selector.modify(sock, selectors.EVENT_READ)
                    continue
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                state["in"] += data
                if not state["in"].endswith(b"0\r\n\r\n"):
                    continue
            if b'"finish_reason": "stop"' in state["in"] or b'"finish_reason":"stop"' in state["in"]:
                completed += 1
            selector.unregister(sock)
            sock.close()
            open_count -= 1
        if time.monotonic() >= next_sample:
            peak_rss = max(peak_rss, rss_kib(proxy_pid))
            peak_threads = max(peak_threads, threads(proxy_pid))
            next_sample = time.monotonic() + 0.1
    for sock in list(states):
        sock.close()
    return completed, time.monotonic() - started, peak_rss, peak_threads


# -- the run -------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args()
    extra = ["--max-streams", str(args.streams + 100), "--log-format", "json",
             "--max-connections-per-client", str(args.streams + 100)]
    with simulator_and_relay(extra) as (sim_url, proxy_url, proxy_pid):
        return run(args, sim_url, proxy_url, proxy_pid)


@contextlib.contextmanager
def simulator_and_relay(relay_args: list[str] = ()) -> Iterator[tuple[str, str, int]]:
    """fake_gloo.py and proxy_server.py in processes of their own: (simulator URL, relay URL, relay pid)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLOO_", "PROXY_"))}
    env["NO_PROXY"] = env["no_proxy"] = "*"
    sim, sim_url = start([sys.executable, "fake_gloo.py", "--port", "0", "--delay", "0"],
                         r"(http://127\.0\.0\.1:\d+)", env, "stdout")
    try:
        proxy_env = dict(env, GLOO_CLIENT_ID="fake-client-id", GLOO_CLIENT_SECRET="fake-client-secret",
                         GLOO_TOKEN_URL=sim_url + "/oauth2/token", GLOO_API_URL=sim_url + "/ai/v2/chat/completions")
        proxy, proxy_url = start([sys.executable, "proxy_server.py", "--port", "0", "--rate-limit-per-minute", "0",
                                  *relay_args], r"listening on (http://127\.0\.0\.1:\d+)", proxy_env, "stderr")
        # The proxy logs a line per request; drain its stderr so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in proxy.stderr], daemon=True).start()
        try:
            yield sim_url, proxy_url, proxy.pid
        finally:
            proxy.terminate()
            proxy.wait(10)
    finally:
        sim.terminate()
        sim.wait(10)


def run(args: argparse.Namespace, sim_url: str, proxy_url: str, proxy_pid: int) -> int:
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "fake-client-id",
                                   "client_secret": "fake-client-secret"}).encode()
    with urllib.request.urlopen(sim_url + "/oauth2/token", data=form) as response:
        token = json.loads(response.read())["access_token"]
    direct = Target(sim_url, "/ai/v2/chat/completions", token)
    relayed = Target(proxy_url, "/api/stream")
    rounds = 3 if args.quick else 10
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")

    # Latency per event and time to first token, interleaved so noise hits both alike.
    delays = {"direct": [], "proxy": []}
    ttft = {"direct": [], "proxy": []}
    for _ in range(rounds):
        for name, target in (("direct", direct), ("proxy", relayed)):
            first, stamped, _, _ = timed_stream(target, "[[stamp]] [[slow:0.005]] [[long:100]]")
            delays[name].extend(stamped)
            ttft[name].append(first)
    for name in ("direct", "proxy"):
        ms = [d / 1e6 for d in delays[name]]
        print(f"{name:6s} per-event delay: p50 {percentile(ms, 0.5):.3f} ms, p99 {percentile(ms, 0.99):.3f} ms "
              f"({len(ms)} events); time to first token p50 {statistics.median(ttft[name]) * 1000:.2f} ms")
    added_p50 = (percentile(delays["proxy"], 0.5) - percentile(delays["direct"], 0.5)) / 1e6
    added_p99 = (percentile(delays["proxy"], 0.99) - percentile(delays["direct"], 0.99)) / 1e6
    added_ttft = (statistics.median(ttft["proxy"]) - statistics.median(ttft["direct"])) * 1000
    print(f"added by the proxy: per event p50 {added_p50:.3f} ms, p99 {added_p99:.3f} ms (target p99 <= 1 ms); "
          f"time to first token p50 {added_ttft:.2f} ms (target <= 2 ms)")

    # A burst: 20,000 events as fast as the simulator writes them.
    burst = {"direct": [], "proxy": []}
    for _ in range(2 if args.quick else 4):
        for name, target in (("direct", direct), ("proxy", relayed)):
            burst[name].append(timed_stream(target, "[[long:20000]]")[2])
    best_direct, best_proxy = min(burst["direct"]), min(burst["proxy"])
    print(f"burst of 20,000 events: direct {best_direct * 1000:.0f} ms, through the proxy {best_proxy * 1000:.0f} ms "
          f"= {best_proxy / best_direct:.2f}x (target <= 1.3x)")

    # Many slow streams at once.
    idle_rss = rss_kib(proxy_pid)
    completed, seconds, peak_rss, peak_threads = concurrent_streams(
        relayed, "[[slow:0.5]] [[long:12]]", args.streams, proxy_pid)
    print(f"{args.streams} concurrent slow streams (12 tokens, 500 ms apart): {completed} of {args.streams} completed "
          f"in {seconds:.1f} s; proxy RSS {idle_rss / 1024:.0f} MiB idle, {peak_rss / 1024:.0f} MiB peak "
          f"({(peak_rss - idle_rss) / max(1, args.streams):.0f} KiB per stream), {peak_threads} threads at peak")
    return 0 if completed == args.streams else 1


if __name__ == "__main__":
    sys.exit(main())
