"""Helpers for the fault, abuse and secret tests: scripted servers, a proxy process, a crowd of sockets.

- `ScriptedServer`: a TCP server on 127.0.0.1 (port from the OS) that runs a handler per connection
  in a thread; the handler writes exactly the bytes a fault needs (a reset with RST, a stall,
  a trickle, an endless line, plain TCP where TLS is expected). Stop it with `addCleanup`.
- `ProxyProcess`: `proxy_server.py` in a subprocess, so its threads, memory and open files can be
  read from /proc while thousands of connections hit it.
- `Crowd`: many non-blocking client sockets driven from one thread with `selectors`.

Everything binds 127.0.0.1, every wait has a time limit, and everything stops by itself.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import socket
import struct
import threading
import time
from typing import Any, Callable, NamedTuple
from collections.abc import Sequence

from tests.support import ProxyProcess, chunk, clean_environment, free_port, proc_status, sse  # noqa: F401 - the tests' too

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1024 * 1024
_POLL_IN = select.POLLIN
_POLL_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


# ---------------------------------------------------------------------------
# Wire pieces
# ---------------------------------------------------------------------------


def chunk_event(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    """One `data:` event holding a chat.completion.chunk (tests.support's chunk, as bytes)."""
    return sse(chunk(content, finish, **extra))


def answer_events(words: Sequence[str], finish: str = "stop") -> list[bytes]:
    """A whole streamed answer: a content event per word, then the finish event."""
    return [chunk_event(word) for word in words] + [chunk_event(None, finish)]


def http_head(status: int = 200, headers: Sequence[tuple[str, str]] = (("Content-Type", "text/event-stream"),),
              reason: str = "OK") -> bytes:
    """A response head whose body runs until the connection closes."""
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{name}: {value}" for name, value in headers]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_response(status: int, payload: Any, reason: str = "OK") -> bytes:
    """A complete JSON response with a Content-Length."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http_head(status, (("Content-Type", "application/json"), ("Content-Length", str(len(body)))),
                     reason) + body


def stream_request(path: str, prompt: str, *, headers: str = "", close: bool = True) -> bytes:
    """A POST of one user message written by hand."""
    body = json.dumps({"messages": [{"role": "user", "content": prompt}]}).encode()
    connection = "Connection: close\r\n" if close else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{connection}{headers}\r\n").encode() + body


# ---------------------------------------------------------------------------
# A scripted TCP server
# ---------------------------------------------------------------------------


class Request(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def prompt(self) -> str:
        """The last message's content of a JSON chat body ("" when there is none)."""
        try:
            messages = json.loads(self.body)["messages"]
            return str(messages[-1].get("content", ""))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return ""


class Peer:
    """One accepted connection, as a handler sees it."""

    def __init__(self, sock: socket.socket, server: ScriptedServer) -> None:
        self.sock = sock
        self.server = server
        self._buffer = b""
        self.sent = 0
        self.gone = False

    def read_request(self, timeout: float = 10.0) -> Request | None:
        """The next HTTP request (head and Content-Length body), or None if the peer closed."""
        self.sock.settimeout(timeout)
        try:
            while b"\r\n\r\n" not in self._buffer:
                data = self.sock.recv(65536)
                if not data:
                    return None
                self._buffer += data
            head, _, rest = self._buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            while len(rest) < length:
                data = self.sock.recv(65536)
                if not data:
                    return None
                rest += data
            self._buffer = rest[length:]
            return Request(method, path, headers, rest[:length])
        except (OSError, ValueError):
            return None

    def send(self, data: bytes, timeout: float = 10.0) -> bool:
        """Write all of `data`; False (and the peer counted as gone) when it cannot be written."""
        if self.server.stopping.is_set():
            return False
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        except OSError:
            self._mark_gone()
            return False
        self.sent += len(data)
        return True

    def pause(self, seconds: float) -> bool:
        """Wait `seconds`; False at once if the peer goes away or the server stops."""
        deadline = time.monotonic() + seconds
        poller = select.poll()
        poller.register(self.sock, _POLL_IN)
        while not self.server.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            ready = poller.poll(min(remaining, 0.05) * 1000)
            if ready:
                if self._peer_closed(ready[0][1]):
                    self._mark_gone()
                    return False
                time.sleep(min(max(0.0, deadline - time.monotonic()), 0.05))  # bytes we will not read
        return False

    def wait_gone(self, timeout: float = 10.0) -> bool:
        """True once the peer closes its end (within `timeout`)."""
        return not self.pause(timeout) and self.gone

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0), as a crashed server or a middlebox does."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def _peer_closed(self, flags: int) -> bool:
        if flags & _POLL_GONE:
            return True
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _mark_gone(self) -> None:
        if not self.gone:
            self.gone = True
            self.server._note_gone()


class ScriptedServer:
    """A TCP server on 127.0.0.1:0 running `handler(peer)` in a thread per connection.

    `gone` counts connections whose peer went away while a handler was writing or waiting;
    `wait_gone(n)` waits for it. `stop()` ends every handler and closes every socket.
    """

    def __init__(self, handler: Callable[[Peer], None]) -> None:
        self.handler = handler
        self.stopping = threading.Event()
        self.connections = 0
        self.gone = 0
        self.finished = 0
        self._cond = threading.Condition()
        self._socks: set[socket.socket] = set()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1024)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name=f"scripted-{self.port}", daemon=True)

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def url(self, path: str = "/ai/v2/chat/completions", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                self.connections += 1
                self._socks.add(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        peer = Peer(sock, self)
        try:
            self.handler(peer)
        except OSError:
            peer._mark_gone()
        finally:
            with self._cond:
                self._socks.discard(sock)
                self.finished += 1
                self._cond.notify_all()
            try:
                sock.close()
            except OSError:
                pass

    def _note_gone(self) -> None:
        with self._cond:
            self.gone += 1
            self._cond.notify_all()

    def wait_gone(self, count: int = 1, timeout: float = 5.0) -> bool:
        """True once `count` peers in all went away mid-answer; False after `timeout`."""
        with self._cond:
            return self._cond.wait_for(lambda: self.gone >= count, timeout)

    def wait_finished(self, count: int = 1, timeout: float = 5.0) -> bool:
        """True once `count` handlers in all have returned."""
        with self._cond:
            return self._cond.wait_for(lambda: self.finished >= count, timeout)

    def stop(self) -> None:
        self.stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        try:
            self._listener.close()
        except OSError:
            pass
        with self._cond:
            socks = list(self._socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(2)


def serve(test: Any, handler: Callable[[Peer], None]) -> ScriptedServer:
    """A started ScriptedServer, stopped when `test` ends."""
    server = ScriptedServer(handler).start()
    test.addCleanup(server.stop)
    return server


# ---------------------------------------------------------------------------
# Handlers for the faults an upstream (or a token endpoint) can commit
# ---------------------------------------------------------------------------

SSE_HEAD = http_head()


def reply(*writes: bytes, pause: float = 0.0, rst: bool = False, hold: float = 0.0) -> Callable[[Peer], None]:
    """A handler: read the request, send each write (`pause` apart), then RST, or hold the
    connection open for up to `hold` seconds (until the client goes away), or close."""

    def handler(peer: Peer) -> None:
        if peer.read_request() is None:
            return
        for index, data in enumerate(writes):
            if index and pause and not peer.pause(pause):
                return
            if not peer.send(data):
                return
        if rst:
            peer.pause(0.1)  # the client has read what was sent and waits in recv
            peer.reset()
        elif hold:
            peer.wait_gone(hold)

    return handler


def endless_line(sent: list[int], cap: int = 512 * MiB) -> Callable[[Peer], None]:
    """A `data:` line that never ends: 64 KiB of "x" after another until the reader leaves."""

    def handler(peer: Peer) -> None:
        if peer.read_request() is None:
            return
        peer.send(SSE_HEAD + b"data: ")
        block = b"x" * 65536
        while peer.sent < cap and peer.send(block):
            pass
        sent.append(peer.sent)

    return handler


def trickle(head: bytes, body: bytes, interval: float, cap: float) -> Callable[[Peer], None]:
    """`head`, then `body` one byte per `interval`, for at most `cap` seconds."""

    def handler(peer: Peer) -> None:
        if peer.read_request() is None or not peer.send(head):
            return
        started = time.monotonic()
        for i in range(len(body)):
            if time.monotonic() - started > cap or not peer.pause(interval) or not peer.send(body[i:i + 1]):
                return
        peer.wait_gone(cap)

    return handler


def not_tls(peer: Peer) -> None:
    """A plain-TCP server where the client expects TLS: it reads the ClientHello, answers HTTP."""
    try:
        peer.sock.settimeout(5)
        peer.sock.recv(4096)
    except OSError:
        return
    peer.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def token_reply(status: int, body: bytes, content_type: str = "application/json") -> Callable[[Peer], None]:
    """A handler that answers `status` with `body` (a token endpoint, say), Content-Length framed."""

    def handler(peer: Peer) -> None:
        if peer.read_request() is not None:
            peer.send(http_head(status, (("Content-Type", content_type), ("Content-Length", str(len(body))))) + body)

    return handler


class CrowdUpstream:
    """The upstream for the crowd tests: short answers, a barrier that holds streams open
    until `target` are open at once (`[[together]]`), and an endless fast stream (`[[flood]]`)."""

    def __init__(self) -> None:
        self.target = 0
        self.open_now = 0
        self.most_open = 0
        self.cond = threading.Condition()

    def __call__(self, peer: Peer) -> None:
        request = peer.read_request()
        if request is None:
            return
        prompt = request.prompt()
        if "[[flood]]" in prompt:
            block = chunk_event("x" * 1000) * 16
            peer.send(http_head())
            while peer.sent < 256 * 1024 * 1024 and peer.send(block):
                pass
            return
        if "[[together]]" in prompt:
            peer.send(http_head() + chunk_event(""))
            with self.cond:
                self.open_now += 1
                self.most_open = max(self.most_open, self.open_now)
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.most_open >= self.target, 30)
                self.open_now -= 1
            peer.send(b"".join(answer_events(["Grace", " is", " a", " gift."])))
            return
        peer.send(http_head() + b"".join(answer_events(["Grace", " is", " a", " gift."])))


# ---------------------------------------------------------------------------
# The proxy as a process
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# A crowd of non-blocking client sockets
# ---------------------------------------------------------------------------


class _Member:
    __slots__ = ("sock", "out", "received", "closed_at", "opened_at")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = b""
        self.received = b""
        self.closed_at: float | None = None
        self.opened_at = time.monotonic()


class Crowd:
    """`count` connections to `address`, all driven from this thread (no thread per connection)."""

    def __init__(self, address: tuple[str, int], count: int, *, rcvbuf: int | None = None) -> None:
        self.selector = selectors.DefaultSelector()
        self.members: list[_Member] = []
        for _ in range(count):
            sock = socket.socket()
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            sock.connect_ex(address)
            member = _Member(sock)
            self.members.append(member)
            self.selector.register(sock, selectors.EVENT_READ, member)

    @property
    def open(self) -> list[_Member]:
        return [m for m in self.members if m.closed_at is None]

    @property
    def closed_count(self) -> int:
        return sum(1 for m in self.members if m.closed_at is not None)

    def send(self, data: bytes, members: list[_Member] | None = None) -> None:
        """Queue `data` on every open member (or the given ones); `pump` writes it."""
        for member in (self.open if members is None else members):
            if member.closed_at is None:
                member.out += data
                self.selector.modify(member.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, member)

    def pump(self, seconds: float, *, until: Callable[[], bool] | None = None,
             tick: Callable[[], None] | None = None, read: bool = True) -> None:
        """Write queued bytes and read answers for `seconds` (or until `until()` is true)."""
        deadline = time.monotonic() + seconds
        next_tick = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline or (until is not None and until()):
                return
            if tick is not None and now >= next_tick:
                tick()
                next_tick = now + 0.05
            for key, mask in self.selector.select(min(0.05, max(0.0, deadline - now))):
                member: _Member = key.data
                if member.closed_at is not None:
                    continue
                try:
                    if mask & selectors.EVENT_WRITE and member.out:
                        sent = member.sock.send(member.out)
                        member.out = member.out[sent:]
                        if not member.out:
                            self.selector.modify(member.sock, selectors.EVENT_READ, member)
                    if mask & selectors.EVENT_READ:
                        if not read:
                            continue
                        data = member.sock.recv(65536)
                        if data:
                            member.received += data
                            continue
                        self._closed(member)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # reset, or refused: the server ended it
                    self._closed(member)

    def _closed(self, member: _Member) -> None:
        member.closed_at = time.monotonic()
        self.selector.unregister(member.sock)
        member.sock.close()

    def close(self) -> None:
        for member in self.members:
            if member.closed_at is None:
                self.selector.unregister(member.sock)
                member.sock.close()
                member.closed_at = time.monotonic()
        self.selector.close()
