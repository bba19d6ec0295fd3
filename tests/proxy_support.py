"""Helpers for the proxy tests: a simulator plus a proxy on loopback, and raw HTTP tools."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from typing import Any

from fake_gloo import FakeGloo
from gloo_stream import GlooClient
from proxy_server import ProxyConfig, ProxyServer
from tests.support import IsolatedTestCase, chunk, sse  # noqa: F401 - chunk and sse are the tests' too


class LogCapture(logging.Handler):
    """Collects the proxy's log lines (request lines and diagnostics)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def request_lines(self, count: int, timeout: float = 3.0) -> list[str]:
        """The request log lines, once at least `count` have been written (the line follows the answer)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.lines if line[:4].isdigit() or line.startswith("{")]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.01)

    def wait_for(self, text: str, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.01)
        return False


class ProxyTestCase(IsolatedTestCase):
    """A simulator and a proxy relaying it, fresh for each test; `proxy_options` adjusts the config."""

    proxy_options: dict[str, Any] = {}
    fake_options: dict[str, Any] = {}
    client_options: dict[str, Any] = {}

    def setUp(self) -> None:
        super().setUp()
        self.fake = FakeGloo(**self.fake_options)
        self.fake.start()
        self.addCleanup(self.fake.stop)
        self.logs = LogCapture()
        diagnostics = logging.getLogger("gloo_proxy")
        diagnostics.addHandler(self.logs)
        diagnostics.setLevel(logging.INFO)
        self.addCleanup(diagnostics.removeHandler, self.logs)
        self.proxy = self.start_proxy()

    def start_proxy(self, *, offline: bool = False, **overrides: Any) -> ProxyServer:
        options = dict(port=0, client_id=self.fake.client_id, client_secret=self.fake.client_secret,
                       token_url=self.fake.token_url, api_url=self.fake.api_url,
                       cors_origins=("http://allowed.example",))
        options.update(self.proxy_options)
        options.update(overrides)
        config = ProxyConfig(**options)
        client = None
        if self.client_options:
            client = GlooClient(client_id=config.client_id, client_secret=config.client_secret,
                                token_url=config.token_url, api_url=config.api_url,
                                read_timeout=config.upstream_idle_seconds, **self.client_options)
        proxy = ProxyServer(config, client=client, log_handler=self.logs, offline=offline)
        proxy.start()
        self.addCleanup(proxy.close)
        return proxy

    # -- requests -------------------------------------------------------------

    def connection(self, proxy: ProxyServer | None = None, timeout: float = 10) -> http.client.HTTPConnection:
        proxy = proxy or self.proxy
        host, port = proxy.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.addCleanup(conn.close)
        return conn

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                proxy: ProxyServer | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = self.connection(proxy)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        all_headers.update(headers or {})
        conn.request(method, path, body=data, headers=all_headers)
        response = conn.getresponse()
        payload = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload

    def post_stream(self, prompt: str, path: str = "/api/stream", **extra: Any) -> tuple[int, dict[str, str], bytes]:
        body = {"messages": [{"role": "user", "content": prompt}]}
        body.update(extra)
        return self.request("POST", path, body)

    def raw_socket(self, proxy: ProxyServer | None = None, timeout: float = 10) -> socket.socket:
        proxy = proxy or self.proxy
        sock = socket.create_connection(proxy.server_address[:2], timeout=timeout)
        self.addCleanup(sock.close)
        return sock


def raw_request(path: str, body: bytes, *, extra_headers: str = "") -> bytes:
    """A POST written by hand, so tests control every byte."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra_headers}\r\n").encode() + body


def read_until_closed(sock: socket.socket, limit: int = 10_000_000) -> bytes:
    parts = []
    total = 0
    while total < limit:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not data:
            break
        parts.append(data)
        total += len(data)
    return b"".join(parts)


def exchange(sock: socket.socket, raw: bytes) -> bytes:
    """Send `raw` (ignoring a reset while sending) and read until the proxy closes."""
    try:
        sock.sendall(raw)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return read_until_closed(sock)


SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"  # a second request hidden in a first one's body


def split_head(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def chunk_frames(body: bytes) -> list[bytes]:
    """The payloads of an HTTP/1.1 chunked body, frame by frame (the terminating frame excluded)."""
    frames = []
    pos = 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end], 16)
        if size == 0:
            return frames
        frames.append(body[end + 2 : end + 2 + size])
        assert body[end + 2 + size : end + 4 + size] == b"\r\n"
        pos = end + 4 + size


def sse_blocks(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block]


def data_events(text: str) -> list[Any]:
    """The `data:` payloads of an event stream body, JSON-decoded where possible; /api/stream's last
    `event: outcome` (the relay's verdict) is left out: `outcome_of()` reads it."""
    events = []
    for block in sse_blocks(text):
        if block.startswith("event: outcome\n"):
            continue
        data = "\n".join(line[6:] for line in block.split("\n") if line.startswith("data: "))
        if not data:
            continue
        try:
            events.append(json.loads(data))
        except ValueError:
            events.append(data)
    return events


def outcome_of(text: str) -> dict | None:
    """The data of /api/stream's `event: outcome` (None without one); it must be the body's last event."""
    blocks = [block for block in sse_blocks(text) if not block.startswith(":")]
    found = [block for block in blocks if block.startswith("event: outcome\n")]
    if not found:
        return None
    assert len(found) == 1 and blocks[-1] is found[0], "one outcome event, the last"
    return json.loads(found[0].split("\ndata: ", 1)[1])


def content_of(events: list[Any]) -> str:
    text = []
    for event in events:
        if isinstance(event, dict):
            for choice in event.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


class ScriptedUpstream:
    """A bare upstream on loopback that answers every POST with one scripted response.

    `answer(status, writes, headers, hold)`: the next answers' status and body pieces (written one
    by one), then `hold` seconds with the connection open and silent before it closes. `requests`
    records each request's path and JSON body. Start it with `with` or start()/stop().
    """

    def __init__(self) -> None:
        import http.server
        import threading

        upstream = self
        self.requests: list[dict[str, Any]] = []
        self.status, self.writes, self.headers, self.hold = 200, [b"data: {}\n\n"], {}, 0.0
        self.closed = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                upstream.requests.append({"path": self.path, "body": body})
                event_stream = upstream.status == 200
                self.send_response(upstream.status)
                self.send_header("Content-Type", "text/event-stream" if event_stream else "application/json")
                for name, value in upstream.headers.items():
                    self.send_header(name, value)
                self.send_header("Connection", "close")
                if not event_stream:
                    payload = b"".join(upstream.writes)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self.end_headers()
                try:
                    for piece in upstream.writes:
                        self.wfile.write(piece)
                        self.wfile.flush()
                    deadline = time.monotonic() + upstream.hold
                    self.connection.settimeout(0.05)
                    while time.monotonic() < deadline:  # silent, until the hold ends or the peer closes
                        try:
                            if self.connection.recv(1) == b"":
                                break
                        except socket.timeout:
                            continue
                except OSError:
                    pass
                finally:
                    upstream.closed.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ai/v2/chat/completions"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def answer(self, status: int = 200, writes: list[bytes] | None = None,
               headers: dict[str, str] | None = None, hold: float = 0.0) -> None:
        self.status, self.writes, self.headers, self.hold = status, list(writes or []), dict(headers or {}), hold

    def start(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
