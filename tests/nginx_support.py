"""Helpers for the deployment tests: deploy/nginx.conf made runnable on loopback, nginx and
proxy processes in the foreground, and event streams timed as they arrive.

The test config is derived from the example, never written separately (see `derived_config`),
so the example and what the tests run cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import unittest
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterator, Sequence

from gloo_stream import SSEDecoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_CONFIG = os.path.join(ROOT, "deploy", "nginx.conf")
SYSTEMD_UNIT = os.path.join(ROOT, "deploy", "gloo-proxy.service")
UPSTREAM_NAME = "gloo_proxy"


# ---------------------------------------------------------------------------
# nginx configuration: just enough of a parser to rewrite the example
# ---------------------------------------------------------------------------


@dataclass
class Directive:
    """One nginx directive: `name args...;` or `name args... { block }`."""

    name: str
    args: list[str]
    block: list[Directive] | None = None


class ConfigSyntaxError(ValueError):
    """The file is not nginx configuration this parser understands."""


_TOKEN = re.compile(r"""\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([{};])|([^\s{};"'#]+)""")


def _tokens(text: str) -> Iterator[tuple[str, bool]]:
    """(token, is_punctuation) pairs; comments and whitespace dropped, quotes kept on quoted words."""
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConfigSyntaxError(f"cannot read the configuration at offset {pos}: {text[pos:pos + 30]!r}")
        pos = match.end()
        double, single, punct, word = match.groups()
        if punct:
            yield punct, True
        elif word is not None:
            yield word, False
        elif double is not None:
            yield '"' + double + '"', False
        elif single is not None:
            yield "'" + single + "'", False


def parse(text: str) -> list[Directive]:
    """The directives of an nginx configuration file, blocks nested."""
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for token, punct in _tokens(text):
        if not punct:
            words.append(token)
        elif token == ";":
            if not words:
                raise ConfigSyntaxError("an empty directive")
            stack[-1].append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            if not words:
                raise ConfigSyntaxError("a block without a name")
            directive = Directive(words[0], words[1:], [])
            stack[-1].append(directive)
            stack.append(directive.block)  # type: ignore[arg-type]
            words = []
        else:
            if words or len(stack) == 1:
                raise ConfigSyntaxError("an unbalanced '}'")
            stack.pop()
    if words or len(stack) != 1:
        raise ConfigSyntaxError("the configuration ends inside a directive or block")
    return stack[0]


def render(directives: Sequence[Directive], depth: int = 0) -> str:
    """Directives back as configuration text."""
    pad = "    " * depth
    lines = []
    for directive in directives:
        head = " ".join([directive.name] + directive.args)
        if directive.block is None:
            lines.append(f"{pad}{head};")
        else:
            lines.append(f"{pad}{head} {{")
            lines.append(render(directive.block, depth + 1))
            lines.append(f"{pad}}}")
    return "\n".join(line for line in lines if line)


def walk(directives: Sequence[Directive]) -> Iterator[Directive]:
    """Every directive, depth first."""
    for directive in directives:
        yield directive
        if directive.block is not None:
            yield from walk(directive.block)


def named(directives: Sequence[Directive], name: str) -> list[Directive]:
    """The directives called `name` directly in `directives`."""
    return [d for d in directives if d.name == name]


def _copy(directives: Sequence[Directive]) -> list[Directive]:
    return [Directive(d.name, list(d.args), None if d.block is None else _copy(d.block)) for d in directives]


def _proxies(server: Directive) -> bool:
    return any(d.name == "proxy_pass" for d in walk(server.block or []))


@dataclass(frozen=True)
class Site:
    """One test deployment: nginx listening on `port`, relaying to proxies on `upstream_ports`."""

    name: str
    port: int
    upstream_ports: tuple[int, ...]

    @property
    def upstream(self) -> str:
        return f"{UPSTREAM_NAME}_{self.name}"


def derived_config(example: str, prefix: str, sites: Sequence[Site]) -> str:
    """deploy/nginx.conf rewritten to run from a temporary prefix on loopback, once per site.

    Only addresses, paths and TLS change (the rules are listed at the top of deploy/nginx.conf);
    every other directive is the example's.
    """
    main = _copy(parse(example))
    out: list[Directive] = []
    for directive in main:
        if directive.name == "user":
            continue  # as root the workers run as nginx's built-in default user
        if directive.name == "worker_processes":
            directive.args = ["1"]
        elif directive.name == "pid":
            directive.args = [os.path.join(prefix, "nginx.pid")]
        elif directive.name == "error_log":
            directive.args = [os.path.join(prefix, "error.log")] + directive.args[1:]
        elif directive.name == "http":
            directive.block = _derived_http(directive.block or [], prefix, sites)
        out.append(directive)
    return render(out) + "\n"


def _derived_http(http: list[Directive], prefix: str, sites: Sequence[Site]) -> list[Directive]:
    block: list[Directive] = [Directive(name, [os.path.join(prefix, folder)]) for name, folder in (
        ("client_body_temp_path", "client_body"), ("proxy_temp_path", "proxy"),
        ("fastcgi_temp_path", "fastcgi"), ("uwsgi_temp_path", "uwsgi"), ("scgi_temp_path", "scgi"))]
    upstreams = [d for d in http if d.name == "upstream" and d.args == [UPSTREAM_NAME]]
    if len(upstreams) != 1:
        raise ConfigSyntaxError(f"expected one `upstream {UPSTREAM_NAME}` block in the example")
    for directive in http:
        if directive.name == "access_log":
            block.append(Directive("access_log", [os.path.join(prefix, "access.log")] + directive.args[1:]))
        elif directive.name == "include":
            continue  # nothing outside the prefix
        elif directive.name == "upstream":
            for site in sites:
                block.append(_derived_upstream(directive, site))
        elif directive.name == "server":
            if not _proxies(directive):
                continue  # the plain-HTTP redirect
            for site in sites:
                block.append(_derived_server(directive, site))
        else:
            block.append(directive)
    return block


def _derived_upstream(upstream: Directive, site: Site) -> Directive:
    servers = named(upstream.block or [], "server")
    if len(servers) < 2:
        raise ConfigSyntaxError("the example's upstream should list two or more instances")
    params = servers[0].args[1:]
    block: list[Directive] = []
    for directive in _copy(upstream.block or []):
        if directive.name == "server":
            if not any(d.name == "server" for d in block):  # the test's instances where the example's stood
                block.extend(Directive("server", [f"127.0.0.1:{port}"] + list(params))
                             for port in site.upstream_ports)
            continue
        if directive.name == "zone":
            directive.args = [site.upstream] + directive.args[1:]
        block.append(directive)
    return Directive("upstream", [site.upstream], block)


def _derived_server(server: Directive, site: Site) -> Directive:
    block: list[Directive] = []
    listened = False
    for directive in _copy(server.block or []):
        if directive.name == "listen":
            if not listened:
                block.append(Directive("listen", [f"127.0.0.1:{site.port}"]))
                listened = True
            continue
        if directive.name.startswith("ssl_"):
            continue
        block.append(directive)
    for directive in walk(block):
        if directive.name == "proxy_pass":
            directive.args = [arg.replace(f"http://{UPSTREAM_NAME}", f"http://{site.upstream}")
                              for arg in directive.args]
    return Directive("server", [], block)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def wait_for_port(port: int, timeout: float, alive: Any = None) -> bool:
    """True once 127.0.0.1:port accepts connections; False after `timeout` or if `alive()` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def find_nginx() -> str:
    """The nginx binary; in CI (CI=true) its absence is an error, elsewhere the tests skip."""
    found = shutil.which("nginx") or next((path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                           if os.access(path, os.X_OK)), None)
    if found:
        return found
    message = "nginx is not installed (Debian: apt-get install nginx-light; .ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        raise RuntimeError("CI=true and " + message)
    raise unittest.SkipTest(message)


def nginx_version(binary: str) -> tuple[int, ...]:
    output = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", output)
    return tuple(int(part) for part in match.groups()) if match else (0,)


class Nginx:
    """nginx in the foreground on a temporary prefix; never the system service."""

    def __init__(self, binary: str, prefix: str, config: str) -> None:
        self.binary = binary
        self.prefix = prefix
        self.config_path = os.path.join(prefix, "nginx.conf")
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write(config)
        # nginx's workers run as an unprivileged user when the tests run as root: let them in.
        os.chmod(prefix, 0o755)
        self.proc: subprocess.Popen | None = None

    def start(self, ports: Sequence[int], timeout: float = 10.0) -> None:
        command = [self.binary, "-p", self.prefix + os.sep, "-c", self.config_path, "-g", "daemon off;"]
        if nginx_version(self.binary) >= (1, 19, 5):
            command[1:1] = ["-e", os.path.join(self.prefix, "error.log")]  # not even a startup line in /var/log
        self._output = open(os.path.join(self.prefix, "nginx.out"), "wb")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._output,
                                     stderr=subprocess.STDOUT)
        for port in ports:
            if not wait_for_port(port, timeout, alive=lambda: self.proc.poll() is None):
                self.stop()
                raise RuntimeError(f"nginx did not start on port {port}:\n{self.diagnostics()}")

    def stop(self) -> None:
        """Fast shutdown (SIGTERM), then SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_output", None) is not None:
            self._output.close()

    def read(self, name: str) -> str:
        try:
            with open(os.path.join(self.prefix, name), encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def error_log(self) -> str:
        return self.read("error.log")

    def access_log(self) -> list[str]:
        return self.read("access.log").splitlines()

    def diagnostics(self) -> str:
        return f"--- nginx output\n{self.read('nginx.out')}\n--- error.log\n{self.error_log()[-3000:]}"


# ---------------------------------------------------------------------------
# Event streams, timed
# ---------------------------------------------------------------------------


@dataclass
class TimedStream:
    """A response read event by event: each data event with the moment it was decoded."""

    status: int
    headers: dict[str, str]
    started: float
    events: list[tuple[float, Any]] = field(default_factory=list)  # (time.time(), JSON or raw text)

    def content_events(self) -> list[tuple[float, dict[str, Any]]]:
        return [(at, event) for at, event in self.events
                if isinstance(event, dict) and any((choice.get("delta") or {}).get("content")
                                                   for choice in event.get("choices") or [])]

    def text(self) -> str:
        return "".join((choice.get("delta") or {}).get("content") or ""
                       for _, event in self.events if isinstance(event, dict)
                       for choice in event.get("choices") or [])

    def finish_reason(self) -> str | None:
        for _, event in reversed(self.events):
            for choice in (event.get("choices") or []) if isinstance(event, dict) else []:
                if choice.get("finish_reason"):
                    return choice["finish_reason"]
        return None


def read_timed(response: Any, started: float) -> TimedStream:
    """Read an http.client response to its end, timing each event as it completes."""
    stream = TimedStream(response.status, {k.lower(): v for k, v in response.getheaders()}, started)
    decoder = SSEDecoder()
    while True:
        data = response.read1(65536)
        events = decoder.feed(data) if data else decoder.close()
        now = time.time()
        for event in events:
            try:
                stream.events.append((now, json.loads(event.data)))
            except ValueError:
                stream.events.append((now, event.data))
        if not data:
            return stream


def read_until_content(response: Any) -> None:
    """Read until the first event that carries content; raise if the stream ends first."""
    decoder = SSEDecoder()
    while True:
        data = response.read1(65536)
        if not data:
            raise AssertionError("the stream ended before any content arrived")
        for event in decoder.feed(data):
            try:
                chunk = json.loads(event.data)
            except ValueError:
                continue
            if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or []):
                return
