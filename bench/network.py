"""Benchmark: the transport on a (simulated) real network, pooled against unpooled, in one run.

A TLS upstream (keep-alive HTTP/1.1, a test certificate made at run time with the `openssl`
command) and, in front of it, latency injectors of our own: TCP forwarders on loopback that
hold each chunk D = RTT/2 ms in each direction and add one RTT to a new connection (its TCP
handshake). Upstream and forwarders run in a child process, so this process's CPU is the
client's (and the relay's) alone. Figures, at each RTT:

- N sequential streams from one GlooClient: time to first token of the first stream and the
  warm p50/p90 (streams 2..N), and how many upstream connections they opened;
- the same through the relay (proxy_server.ProxyServer on loopback, its upstream through the
  forwarder), TTFT as its client sees it, cold and warm-started (`ProxyServer.warm_start()`, as
  `python proxy_server.py` does: its first answer should cost about what a later one does);
- both with pooling (the default) and without (`pool_size=0`, one connection per request);
- client CPU per request (thread time, no forwarder) against a bare keep-alive http.client loop.

    python bench/network.py [--streams 20] [--rtt 20 100] [--server-ms 5]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import http.server
import json
import os
import platform
import queue
import re
import shutil
import socket
import socketserver
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gloo_stream import GlooClient  # noqa: E402

CONTENT = re.compile(rb'"content": ?"[^"]')
KEY = "network-bench-key-0001"
TOKENS = ["The", " answer", " is", " here", "."]


# -- the child process: a TLS upstream and latency-injecting forwarders ---------------------------


def make_certificate(folder: str) -> tuple[str, str]:
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=120)
    return cert, key


def sse_chunk(data: dict[str, Any]) -> bytes:
    event = b"data: " + json.dumps(data).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_seconds = 0.005

    def setup(self) -> None:
        self.request.do_handshake()  # in this connection's thread, not the accept loop's
        super().setup()

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.server_seconds)  # the server's own time before its first token
        chunks = [sse_chunk({"choices": [{"delta": {"content": t}, "finish_reason": None}]}) for t in TOKENS]
        chunks.append(sse_chunk({"choices": [{"delta": {}, "finish_reason": "stop"}]}))
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        self.wfile.write(head + chunks[0])
        self.wfile.flush()
        self.wfile.write(b"".join(chunks[1:]) + b"0\r\n\r\n")
        self.wfile.flush()


class TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    context: ssl.SSLContext

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as servers do: no Nagle wait for ACKs
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address


class Forwarder(socketserver.ThreadingTCPServer):
    """Loopback TCP to `target`: each chunk held `delay` s each way, a new connection's first byte one RTT more."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target: tuple[str, int], rtt: float) -> None:
        self.target, self.rtt, self.delay = target, rtt, rtt / 2
        self.connections = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ForwardHandler)


class ForwardHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Forwarder = self.server  # type: ignore[assignment]
        with server.lock:
            server.connections += 1
        accepted = time.monotonic()
        client = self.request
        upstream = socket.create_connection(server.target)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The client's first byte cannot leave before its TCP handshake (one RTT) is over.
        pumps = [threading.Thread(target=pump, args=(client, upstream, server.delay, accepted + server.rtt)),
                 threading.Thread(target=pump, args=(upstream, client, server.delay, 0.0))]
        for thread in pumps:
            thread.start()
        for thread in pumps:
            thread.join()
        upstream.close()


def pump(source: socket.socket, dest: socket.socket, delay: float, not_before: float) -> None:
    held: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def send() -> None:
        while True:
            due, data = held.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:
                try:
                    dest.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dest.sendall(data)
            except OSError:
                return

    sender = threading.Thread(target=send)
    sender.start()
    while True:
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        held.put((max(time.monotonic() + delay, not_before + delay), data))
        if not data:
            break
    sender.join()


def serve(rtts: list[float], server_ms: float, folder: str) -> None:
    cert, key = make_certificate(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    Upstream.server_seconds = server_ms / 1000
    upstream = TLSServer(("127.0.0.1", 0), Upstream)
    upstream.context = context
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    forwarders = {str(int(rtt)): Forwarder(upstream.server_address[:2], rtt / 1000) for rtt in rtts}
    for forwarder in forwarders.values():
        threading.Thread(target=forwarder.serve_forever, daemon=True).start()
    print(json.dumps({"cert": cert, "upstream": upstream.server_address[1],
                      "forwarders": {rtt: f.server_address[1] for rtt, f in forwarders.items()}}), flush=True)
    for line in sys.stdin:  # "stats": connections each forwarder accepted so far
        if line.strip() == "stats":
            print(json.dumps({rtt: f.connections for rtt, f in forwarders.items()}), flush=True)


# -- this process: the clients ------------------------------------------------------------------


class Child:
    def __init__(self, rtts: list[float], server_ms: float, folder: str) -> None:
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", "--server-ms", str(server_ms),
               "--folder", folder, "--rtt", *[str(r) for r in rtts]]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())

    def connections(self, rtt: float) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())[str(int(rtt))])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def direct_ttft(client: GlooClient) -> float:
    started = time.perf_counter()
    first = None
    with client.stream("Hi") as stream:
        for _ in stream:
            if first is None:
                first = time.perf_counter()
    assert first is not None
    return (first - started) * 1000


def relay_ttft(conn: http.client.HTTPConnection) -> float:
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "stream": True}).encode()
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    first = None
    seen = b""
    while True:
        data = response.read1(65536)
        if not data:
            break
        if first is None:
            seen += data
            if CONTENT.search(seen):
                first = time.perf_counter()
    assert first is not None, seen[:300]
    return (first - started) * 1000


def bare_ttft(conn: http.client.HTTPSConnection) -> float:
    """The floor: a keep-alive http.client connection, the first content found in the raw bytes."""
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "stream": True}).encode()
    started = time.perf_counter()
    conn.request("POST", "/v1/chat", body, {"Content-Type": "application/json", "Authorization": "Bearer " + KEY})
    response = conn.getresponse()
    first = None
    while True:
        data = response.read1(65536)
        if not data:
            break
        if first is None and CONTENT.search(data):
            first = time.perf_counter()
    assert first is not None
    return (first - started) * 1000


def summary(ttfts: list[float], connections: int) -> dict[str, float]:
    warm = sorted(ttfts[1:])
    return {"first": ttfts[0], "p50": statistics.median(warm),
            "p90": warm[min(len(warm) - 1, int(round(0.9 * (len(warm) - 1))))], "connections": connections}


def client_for(url: str, context: ssl.SSLContext, pool_size: int) -> GlooClient:
    return GlooClient(api_key=KEY, api_url=url, ssl_context=context, pool_size=pool_size, max_retries=0,
                      read_timeout=10.0)


def run_latency(child: Child, context: ssl.SSLContext, rtt: float, streams: int) -> dict[str, dict[str, float]]:
    from proxy_server import ProxyConfig, ProxyServer

    url = f"https://127.0.0.1:{child.info['forwarders'][str(int(rtt))]}/v1/chat"
    rows: dict[str, dict[str, float]] = {}
    conn = http.client.HTTPSConnection("127.0.0.1", int(url.split(":")[2].split("/")[0]), context=context, timeout=30)
    before = child.connections(rtt)
    ttfts = [bare_ttft(conn) for _ in range(streams)]
    rows["bare http.client, keep-alive (floor)"] = summary(ttfts, child.connections(rtt) - before)
    conn.close()
    for label, pool_size in (("pooled", 16), ("pool_size=0", 0)):
        client = client_for(url, context, pool_size)
        before = child.connections(rtt)
        ttfts = [direct_ttft(client) for _ in range(streams)]
        rows[f"GlooClient, {label}"] = summary(ttfts, child.connections(rtt) - before)
        client.close()

        for warm in (False, True) if pool_size else (False,):
            relay_client = client_for(url, context, pool_size)
            config = ProxyConfig(port=0, rate_limit_per_minute=1_000_000, cors_origins=("http://localhost",))
            with ProxyServer(config, client=relay_client) as proxy:
                before = child.connections(rtt)
                if warm:  # as `python proxy_server.py` starts: TLS context, token, one connection ready
                    proxy.warm_start()
                    deadline = time.monotonic() + 30
                    while proxy.warming and time.monotonic() < deadline:
                        time.sleep(0.01)
                host, port = proxy.server_address[:2]
                conn = http.client.HTTPConnection(host, port, timeout=30)
                ttfts = [relay_ttft(conn) for _ in range(streams)]
                rows[f"relay, {label}" + (", warm-started" if warm else "")] = summary(
                    ttfts, child.connections(rtt) - before)
                conn.close()
            relay_client.close()
    return rows


def run_cpu(child: Child, context: ssl.SSLContext, requests: int) -> dict[str, float]:
    port = child.info["upstream"]
    url = f"https://127.0.0.1:{port}/v1/chat"
    results: dict[str, float] = {}
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "stream": True,
                       "auto_routing": True}).encode()
    headers = {"Authorization": "Bearer " + KEY, "Content-Type": "application/json",
               "Accept": "text/event-stream", "User-Agent": "bench"}

    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    for _ in range(3):  # warm up: the connection and the TLS session
        conn.request("POST", "/v1/chat", body, headers)
        conn.getresponse().read()
    started = time.thread_time()
    for _ in range(requests):
        conn.request("POST", "/v1/chat", body, headers)
        conn.getresponse().read()
    results["bare http.client, keep-alive"] = (time.thread_time() - started) / requests * 1000
    conn.close()

    for label, pool_size in (("GlooClient, pooled", 16), ("GlooClient, pool_size=0", 0)):
        client = client_for(url, context, pool_size)
        for _ in range(3):
            client.complete("Hi")
        started = time.thread_time()
        for _ in range(requests):
            client.complete("Hi")
        results[label] = (time.thread_time() - started) / requests * 1000
        client.close()

    started = time.thread_time()  # what every request paid before: a new default context
    for _ in range(10):
        ssl.create_default_context()
    results["(one ssl.create_default_context(), for scale)"] = (time.thread_time() - started) / 10 * 1000
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=20, help="sequential streams per case (default 20)")
    parser.add_argument("--rtt", type=float, nargs="+", default=[20.0, 100.0], help="round trips in ms")
    parser.add_argument("--server-ms", type=float, default=5.0, help="the upstream's time to its first token")
    parser.add_argument("--cpu-requests", type=int, default=200)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.rtt, args.server_ms, args.folder)
        return 0
    if shutil.which("openssl") is None:
        print("bench/network.py needs the openssl command to make its test certificate", file=sys.stderr)
        return 2
    folder = tempfile.mkdtemp(prefix="gloo-network-bench-")
    child = Child(args.rtt, args.server_ms, folder)
    try:
        context = ssl.create_default_context(cafile=child.info["cert"])
        warm = client_for(f"https://127.0.0.1:{child.info['upstream']}/v1/chat", context, 0)
        warm.complete("Hi")  # the child's first handshake loads its key: not a cost of any client
        warm.close()
        nproc = os.cpu_count()
        print(f"# bench/network.py  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  "
              f"nproc={nproc} {platform.machine()} Python {platform.python_version()} "
              f"{ssl.OPENSSL_VERSION}; server time {args.server_ms:g} ms; {args.streams} sequential streams")
        for rtt in args.rtt:
            rows = run_latency(child, context, rtt, args.streams)
            target = rtt + args.server_ms
            print(f"\n## RTT {rtt:g} ms (one RTT + server time = {target:g} ms; target warm p50 <= "
                  f"{1.15 * target:.1f} ms)\n")
            print("| case | first TTFT ms | warm p50 ms | warm p90 ms | upstream connections |")
            print("|---|---:|---:|---:|---:|")
            for label, row in rows.items():
                print(f"| {label} | {row['first']:.1f} | {row['p50']:.1f} | {row['p90']:.1f} | "
                      f"{row['connections']:d} |")
            gap = rows["relay, pooled"]["p50"] - rows["GlooClient, pooled"]["p50"]
            ratio = rows["GlooClient, pooled"]["p50"] / target
            floor = rows["GlooClient, pooled"]["p50"] - rows["bare http.client, keep-alive (floor)"]["p50"]
            started = rows["relay, pooled, warm-started"]
            print(f"\nGlooClient warm p50 / (RTT + server time): {ratio:.3f}x; above the floor: {floor:+.1f} ms; "
                  f"relay warm p50 - direct warm p50: {gap:+.1f} ms; warm-started relay's first answer / "
                  f"its warm p50: {started['first'] / started['p50']:.2f}x")
        cpu = run_cpu(child, context, args.cpu_requests)
        print(f"\n## client CPU per request (thread time, {args.cpu_requests} streams, no forwarder)\n")
        print("| client | CPU ms/request | vs bare http.client |")
        print("|---|---:|---:|")
        bare = cpu["bare http.client, keep-alive"]
        for label, value in cpu.items():
            print(f"| {label} | {value:.3f} | {value / bare:.2f}x |")
    finally:
        child.close()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
