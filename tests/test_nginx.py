"""Deployment: several proxies behind a real nginx running deploy/nginx.conf.

One nginx for the whole class, on a temporary prefix and free loopback ports, in front of five
test sites, each `upstream` + `server` pair of the example pointed at its own two instances:

    main       two in-process proxies: streaming, spreading, gzip, /health, client address, Origin
    limited    two in-process proxies at 3 requests a minute: X-Forwarded-For and rate limits
    failover   two in-process proxies, one closed mid-test
    full       two in-process proxies of one stream each, one kept full
    draining   two `proxy_server.py --offline` processes, one sent a real SIGTERM mid-stream

nginx is started by the tests themselves (`nginx -p <tmp> -c <tmp>/nginx.conf -g 'daemon off;'`)
and stopped with them, never the system service. Without nginx the tests skip, except in CI
(CI=true), where that is a failure: .ci/run installs nginx-light.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
from typing import Any
from unittest import mock

from fake_gloo import FakeGloo
from proxy_server import ProxyConfig, ProxyServer, _build_parser
from tests.nginx_support import (
    EXAMPLE_CONFIG,
    SYSTEMD_UNIT,
    Nginx,
    Site,
    TimedStream,
    derived_config,
    find_nginx,
    named,
    parse,
    read_timed,
    read_until_content,
    walk,
)
from tests.proxy_support import LogCapture
from tests.support import IsolatedTestCase, ProxyProcess, clean_environment, free_port

NGINX = "127.0.0.1"          # the trusted proxy: nginx connects to the instances from here
OTHER_CLIENT = "127.0.0.2"   # a client on another address, never trusted
THIRD_CLIENT = "127.0.0.3"
LIMIT = 3                    # requests a minute per client on each "limited" instance


def prompt_body(prompt: str) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": prompt}]}).encode()


class NginxDeploymentTests(IsolatedTestCase):
    """Requests through nginx to two proxy instances per site."""

    figures: dict[str, Any] = {}  # measured numbers, for whoever runs these by hand

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        binary = find_nginx()
        environment = mock.patch.dict(os.environ, clean_environment(), clear=True)
        environment.start()
        cls.addClassCleanup(environment.stop)
        cls.workdir = tempfile.mkdtemp(prefix="gloo-nginx-")
        cls.addClassCleanup(shutil.rmtree, cls.workdir, True)

        # The processes first: starting Python takes longest, and they bind port 0 themselves.
        env = clean_environment({"PROXY_TRUSTED_PROXIES": NGINX})
        cls.processes = [ProxyProcess("--offline", "--drain-seconds", "10", env=env, workdir=cls.workdir,
                                      name=f"draining-{i}", wait=False) for i in range(2)]
        for process in cls.processes:
            cls.addClassCleanup(process.stop, kill=True)

        cls.fake = FakeGloo().start()
        cls.addClassCleanup(cls.fake.stop)
        cls.logs: dict[ProxyServer, LogCapture] = {}
        cls.main = [cls.start_proxy() for _ in range(2)]
        cls.limited = [cls.start_proxy(rate_limit_per_minute=LIMIT) for _ in range(2)]
        cls.failover = [cls.start_proxy() for _ in range(2)]
        cls.full = [cls.start_proxy(max_streams=1) for _ in range(2)]
        cls.slow = [cls.start_proxy(write_timeout_seconds=0.5) for _ in range(2)]
        draining_ports = tuple(process.wait_listening() for process in cls.processes)

        cls.sites = {
            "main": Site("main", free_port(), tuple(p.server_address[1] for p in cls.main)),
            "limited": Site("limited", free_port(), tuple(p.server_address[1] for p in cls.limited)),
            "failover": Site("failover", free_port(), tuple(p.server_address[1] for p in cls.failover)),
            "full": Site("full", free_port(), tuple(p.server_address[1] for p in cls.full)),
            "slow": Site("slow", free_port(), tuple(p.server_address[1] for p in cls.slow)),
            "draining": Site("draining", free_port(), draining_ports),
        }
        prefix = os.path.join(cls.workdir, "nginx")
        os.mkdir(prefix)
        with open(EXAMPLE_CONFIG, encoding="utf-8") as handle:
            config = derived_config(handle.read(), prefix, list(cls.sites.values()))
        cls.nginx = Nginx(binary, prefix, config)
        cls.addClassCleanup(cls.nginx.stop)
        cls.nginx.start([site.port for site in cls.sites.values()])

    @classmethod
    def start_proxy(cls, **options: Any) -> ProxyServer:
        logs = LogCapture()
        config = ProxyConfig(port=0, client_id=cls.fake.client_id, client_secret=cls.fake.client_secret,
                             token_url=cls.fake.token_url, api_url=cls.fake.api_url,
                             trusted_proxies=(NGINX,), **options)
        proxy = ProxyServer(config, log_handler=logs).start()
        cls.addClassCleanup(proxy.close)
        cls.logs[proxy] = logs
        return proxy

    def figure(self, name: str, value: Any) -> None:
        self.figures[f"{self._testMethodName}.{name}"] = value

    # -- requests -------------------------------------------------------------

    def request(self, port: int, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, source: str = "127.0.0.1",
                timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        conn = self.open(port, method, path, body, headers, source, timeout)
        response = conn.getresponse()
        payload = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload

    def open(self, port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, source: str = "127.0.0.1",
             timeout: float = 10) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
        self.addCleanup(conn.close)
        all_headers = {"Content-Type": "application/json"} if body is not None else {}
        all_headers.update(headers or {})
        conn.request(method, path, body=body, headers=all_headers)
        return conn

    def stream(self, site: str, prompt: str, headers: dict[str, str] | None = None, tag: str = "") -> TimedStream:
        """A stream through nginx; `tag` goes in the query string (the proxy ignores it, nginx logs it)."""
        started = time.time()
        path = f"/api/stream?tag={tag}" if tag else "/api/stream"
        conn = self.open(self.sites[site].port, "POST", path, prompt_body(prompt), headers)
        return read_timed(conn.getresponse(), started)

    def health(self, port: int) -> dict[str, Any]:
        status, _, body = self.request(port, "GET", "/health")
        self.assertEqual(status, 200)
        return json.loads(body)

    def completed(self, port: int) -> int:
        return self.health(port)["streams"].get("complete", 0)

    def completed_at_least(self, ports: list[int], count: int) -> int:
        """The streams `ports` finished, once they reach `count` or 5 s pass: an instance counts a stream
        just after its last byte, so a client that has read the answer may ask a moment too soon."""
        deadline = time.monotonic() + 5
        while True:
            done = sum(self.completed(port) for port in ports)
            if done >= count or time.monotonic() > deadline:
                return done
            time.sleep(0.01)

    def clients_logged(self, proxies: list[ProxyServer], expected: str) -> list[str]:
        """The client addresses the instances logged, once `expected` is among them (the line follows the answer)."""
        deadline = time.monotonic() + 3
        while True:
            logged = [line.split()[1] for proxy in proxies for line in self.logs[proxy].request_lines(0)]
            if expected in logged or time.monotonic() > deadline:
                return logged
            time.sleep(0.01)

    # -- streaming ------------------------------------------------------------

    def test_stream_arrives_event_by_event_with_buffering_on(self):
        # 8 tokens 200 ms apart, each stamped by the simulator as it is written.
        stream = self.stream("main", "Count slowly [[slow:0.2]] [[long:8]] [[stamp]]",
                             headers={"Accept-Encoding": "gzip"})
        self.assertEqual(stream.status, 200)
        self.assertEqual(stream.headers["content-type"], "text/event-stream; charset=utf-8")
        self.assertNotIn("content-encoding", stream.headers)
        self.assertEqual(stream.finish_reason(), "stop")
        content = stream.content_events()
        self.assertEqual(len(content), 8)
        first_arrival = content[0][0]
        last_sent = content[-1][1]["sent_ns"] / 1e9
        lags = [at - event["sent_ns"] / 1e9 for at, event in content]
        self.figure("first_content_after_s", round(first_arrival - stream.started, 3))
        self.figure("last_content_sent_after_s", round(last_sent - stream.started, 3))
        self.figure("max_lag_s", round(max(lags), 4))
        # The first token is on screen before the last one is even generated, and the events reach
        # the client as they are sent, not in a burst at the end (an order of events, not a time).
        self.assertLess(first_arrival, last_sent)
        before_the_last = sum(1 for at, _ in content if at < last_sent)
        self.assertGreaterEqual(before_the_last, len(content) - 2, lags)

    def test_client_going_away_stops_the_upstream_through_nginx(self):
        before = self.fake.disconnects
        conn = self.open(self.sites["main"].port, "POST", "/api/stream", prompt_body("Hi [[stall]]"))
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        read_until_content(response)
        closed_at = time.monotonic()
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        self.assertTrue(self.fake.wait_for_disconnect(5, count=before + 1))
        self.figure("upstream_closed_after_s", round(time.monotonic() - closed_at, 3))

    def test_a_client_that_stops_reading_is_cut_off_through_nginx(self):
        # With nginx buffering on, only the proxy's `X-Accel-Buffering: no` stops nginx from
        # spooling the stream to disk for a client that reads nothing: unbuffered, the back
        # pressure reaches the proxy, whose write timeout cuts the stream and closes the upstream.
        before = self.fake.disconnects
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.sites["slow"].port))
        self.addCleanup(sock.close)
        body = prompt_body("[[long:400000]]")
        started = time.monotonic()
        sock.sendall(b"POST /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertTrue(self.fake.wait_for_disconnect(20, count=before + 1))  # never read a byte
        self.figure("upstream_closed_after_s", round(time.monotonic() - started, 3))
        deadline = time.monotonic() + 3
        while not any("slow_client" in line for proxy in self.slow for line in self.logs[proxy].lines):
            self.assertLess(time.monotonic(), deadline, "no instance logged the slow client")
            time.sleep(0.01)

    # -- spreading and the per-instance endpoints -----------------------------

    def test_requests_are_spread_over_both_instances(self):
        ports = self.sites["main"].upstream_ports
        before = [self.health(port) for port in ports]
        for i in range(6):
            stream = self.stream("main", f"Question {i} [[long:3]]")
            self.assertEqual((stream.status, stream.finish_reason()), (200, "stop"))
        self.completed_at_least(ports, sum(b["streams"].get("complete", 0) for b in before) + 6)  # the last counted
        after = [self.health(port) for port in ports]
        streams = [a["streams"].get("complete", 0) - b["streams"].get("complete", 0) for a, b in zip(after, before)]
        requests = [a["requests"] - b["requests"] for a, b in zip(after, before)]
        self.figure("streams_per_instance", streams)
        self.assertEqual(sum(streams), 6)
        self.assertTrue(all(count >= 2 for count in streams), streams)
        self.assertTrue(all(count >= 2 for count in requests), requests)

    def test_gzip_is_on_for_the_page(self):
        # So that the stream's missing Content-Encoding above means "exempt", not "gzip is off".
        status, headers, body = self.request(self.sites["main"].port, "GET", "/",
                                             headers={"Accept-Encoding": "gzip"})
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("content-encoding"), "gzip")

    def test_health_through_nginx_metrics_only_per_instance(self):
        port = self.sites["main"].port
        status, _, body = self.request(port, "GET", "/health")
        self.assertEqual((status, json.loads(body)["status"]), (200, "ok"))
        status, _, _ = self.request(port, "GET", "/metrics")
        self.assertEqual(status, 403)
        self.stream("main", "Hi [[long:2]]")
        status, headers, body = self.request(self.sites["main"].upstream_ports[0], "GET", "/metrics")
        self.assertEqual(status, 200)
        text = body.decode()
        for family, kind in (("gloo_proxy_requests_total", "counter"), ("gloo_proxy_active_streams", "gauge"),
                             ("gloo_proxy_streams_total", "counter"),
                             ("gloo_proxy_time_to_first_token_seconds", "histogram"),
                             ("gloo_proxy_stream_duration_seconds", "histogram"),
                             ("gloo_proxy_relayed_bytes_total", "counter"),
                             ("gloo_proxy_upstream_errors_total", "counter")):
            with self.subTest(family=family):
                self.assertIn(f"# TYPE {family} {kind}\n", text)
        self.assertRegex(text, r'gloo_proxy_requests_total\{route="/api/stream",status="200"\} [1-9]')

    def test_page_posts_under_a_public_host_name(self):
        # Behind nginx the page is at https://chat.example.com, not a loopback name: the proxy
        # accepts that Origin because the request came through its trusted proxy...
        site = self.sites["main"]
        host = f"chat.example.test:{site.port}"
        origin = {"Host": host, "Origin": f"http://{host}"}
        status, headers, _ = self.request(site.port, "POST", "/api/stream", prompt_body("Hi [[long:2]]"),
                                          headers=origin)
        self.assertEqual(status, 200)
        # ...while a direct request naming that host is refused (DNS rebinding guard).
        direct = {"Host": f"chat.example.test:{site.upstream_ports[0]}",
                  "Origin": f"http://chat.example.test:{site.upstream_ports[0]}"}
        status, _, _ = self.request(site.upstream_ports[0], "POST", "/api/stream", prompt_body("Hi"),
                                    headers=direct, source=OTHER_CLIENT)
        self.assertEqual(status, 403)

    # -- client addresses and rate limits --------------------------------------

    def exhaust(self, port: int, forwarded: list[str], source: str = "127.0.0.1") -> tuple[int, dict[str, str]]:
        """Requests until the first 429: how many passed, and the 429's headers."""
        for sent, address in enumerate(forwarded):
            status, headers, body = self.request(port, "GET", "/v1/models", headers={"X-Forwarded-For": address},
                                                 source=source)
            if status == 429:
                self.assertEqual(json.loads(body)["error"]["type"], "rate_limit_error")
                return sent, headers
            self.assertEqual(status, 200)
        self.fail(f"no 429 after {len(forwarded)} requests")

    def test_clients_behind_nginx_have_their_own_rate_limits(self):
        site = self.sites["limited"]
        passed, headers = self.exhaust(site.port, ["203.0.113.10"] * 10)
        self.figure("client_a_requests_before_429", passed)
        # Each instance keeps its own count: more than one instance's LIMIT, at most the sum.
        self.assertGreater(passed, LIMIT)
        self.assertLessEqual(passed, 2 * LIMIT)
        self.assertGreaterEqual(int(headers["retry-after"]), 1)
        status, _, _ = self.request(site.port, "GET", "/v1/models", headers={"X-Forwarded-For": "203.0.113.20"})
        self.assertEqual(status, 200)
        logged = self.clients_logged(self.limited, "203.0.113.20")
        self.assertIn("203.0.113.10", logged)
        self.assertIn("203.0.113.20", logged)
        self.assertNotIn(NGINX, logged)

    def test_forged_forwarded_for_sent_directly_is_ignored(self):
        proxy = self.limited[0]
        forged = [f"198.51.100.{i}" for i in range(1, 11)]
        passed, _ = self.exhaust(proxy.server_address[1], forged, source=OTHER_CLIENT)
        self.assertEqual(passed, LIMIT)  # one bucket, the real address's, whatever the header says
        logged = self.clients_logged([proxy], OTHER_CLIENT)
        self.assertIn(OTHER_CLIENT, logged)
        self.assertFalse(any(address.startswith("198.51.100.") for address in logged), logged)

    def test_forged_forwarded_for_through_nginx_is_ignored(self):
        # nginx passes "198.51.100.x, 127.0.0.3": the right-most untrusted entry is the real client.
        site = self.sites["limited"]
        forged = [f"198.51.100.{i}" for i in range(11, 21)]
        passed, _ = self.exhaust(site.port, forged, source=THIRD_CLIENT)
        self.assertGreater(passed, LIMIT)
        self.assertLessEqual(passed, 2 * LIMIT)
        logged = self.clients_logged(self.limited, THIRD_CLIENT)
        self.assertIn(THIRD_CLIENT, logged)
        self.assertFalse(any(address in forged for address in logged), logged)

    # -- losing an instance -----------------------------------------------------

    def upstream_attempts(self, tag: str, count: int) -> list[list[tuple[str, str]]]:
        """For the `count` requests tagged `tag`: the (instance, status) pairs nginx tried, in order."""
        pattern = re.compile(r'"POST /api/stream\?tag=' + re.escape(tag)
                             + r'-\d+ .* upstream=(.*) upstream_status=(.*)$')
        deadline = time.monotonic() + 3
        while True:  # nginx writes the line just after the response's last byte: wait for it
            matches = [match for match in map(pattern.search, self.nginx.access_log()) if match]
            if len(matches) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self.assertEqual(len(matches), count)
        return [list(zip(re.split(r",\s*", match.group(1)), re.split(r",\s*", match.group(2)))) for match in matches]

    def test_closed_instance_is_skipped(self):
        site = self.sites["failover"]
        dead, alive = self.failover
        dead_address, alive_address = (f"127.0.0.1:{port}" for port in site.upstream_ports)
        ports = [dead.server_address[1], alive.server_address[1]]
        started = sum(self.completed(port) for port in ports)
        for i in range(2):  # both instances in use, nginx holding a kept-alive connection to each
            self.assertEqual(self.stream("failover", f"Warm {i} [[long:2]]").status, 200)
        self.assertEqual(self.completed_at_least(ports, started + 2), started + 2)  # both warm-ups counted
        before = self.completed(alive.server_address[1])
        dead.close()
        for i in range(10):
            stream = self.stream("failover", f"After {i} [[long:3]]", tag=f"after-{i}")
            self.assertEqual((stream.status, stream.finish_reason()), (200, "stop"))
        self.assertEqual(self.completed_at_least(ports[1:], before + 10) - before, 10)
        attempts = self.upstream_attempts("after", 10)
        self.assertTrue(all(tries[-1] == (alive_address, "200") for tries in attempts), attempts)
        on_dead = [status for tries in attempts for address, status in tries if address == dead_address]
        self.figure("statuses_from_closed_instance", on_dead)
        # max_fails=3: three failed attempts in fail_timeout and nginx stops trying it, where plain
        # alternation would have tried it on about half of the ten requests.
        self.assertGreaterEqual(len(on_dead), 1)
        self.assertLessEqual(len(on_dead), 3)
        self.assertIn("upstream server temporarily disabled", self.nginx.error_log())

    def test_full_instance_hands_requests_to_the_other(self):
        site = self.sites["full"]
        busy, free = self.full
        # Fill one instance (one stream at most) directly, behind nginx's back.
        conn = self.open(busy.server_address[1], "POST", "/api/stream", prompt_body("Hold [[stall]]"))
        read_until_content(conn.getresponse())
        self.assertEqual(busy.active_streams, 1)
        for i in range(4):
            stream = self.stream("full", f"Spill {i} [[long:3]]", tag=f"spill-{i}")
            self.assertEqual((stream.status, stream.finish_reason()), (200, "stop"))
        attempts = self.upstream_attempts("spill", 4)
        busy_address, free_address = (f"127.0.0.1:{port}" for port in site.upstream_ports)
        self.assertTrue(all(tries[-1] == (free_address, "200") for tries in attempts), attempts)
        self.assertIn([(busy_address, "503"), (free_address, "200")], attempts)  # tried, full, retried
        self.figure("attempts", attempts)

    def test_sigterm_lets_streams_finish_and_moves_new_requests(self):
        site = self.sites["draining"]
        for i in range(2):  # nginx holds a kept-alive connection to each instance
            self.assertEqual(self.stream("draining", f"Warm {i} [[slow:0]] [[long:2]]").status, 200)
        # Three 2-second streams: least_conn puts one on an instance and two on the other...
        started = time.time()
        streams = []
        for i in range(3):
            conn = self.open(site.port, "POST", "/api/stream", prompt_body(f"Long {i} [[slow:0.1]] [[long:20]]"))
            response = conn.getresponse()
            self.assertEqual(response.status, 200)
            streams.append(response)
        active = [self.health(process.port)["active_streams"] for process in self.processes]
        self.assertEqual(sorted(active), [1, 2])
        # ...so nginx's first choice for new requests is the one with one stream: stop that one.
        stopping = self.processes[active.index(1)]
        other = self.processes[active.index(2)]
        stopping_address = f"127.0.0.1:{stopping.port}"
        before = self.completed(other.port)

        stopping.sigterm()
        signalled = time.monotonic()
        for i in range(4):
            stream = self.stream("draining", f"During {i} [[slow:0]] [[long:3]]", tag=f"during-{i}")
            self.assertEqual((stream.status, stream.finish_reason()), (200, "stop"))
        moved_in = time.monotonic() - signalled
        self.assertEqual(self.completed_at_least([other.port], before + 4) - before, 4)
        self.assertIsNone(stopping.proc.poll(), "the instance exited before its stream finished")
        attempts = self.upstream_attempts("during", 4)
        self.assertTrue(all(tries[-1] == (f"127.0.0.1:{other.port}", "200") for tries in attempts), attempts)
        # nginx tried the stopping instance first (it had fewer streams): refused or reset, retried,
        # and the client never knew.
        self.assertEqual(attempts[0][0][0], stopping_address)
        self.figure("statuses_from_stopping_instance",
                    [status for tries in attempts for address, status in tries if address == stopping_address])

        for response in streams:
            stream = read_timed(response, started)
            self.assertEqual(stream.finish_reason(), "stop")
            self.assertFalse(any(isinstance(event, dict) and "error" in event for _, event in stream.events))
        finished_in = time.monotonic() - signalled
        self.assertEqual(stopping.proc.wait(10), 0, stopping.output())
        self.assertIn("draining", stopping.output())
        self.figure("new_requests_done_after_sigterm_s", round(moved_in, 3))
        self.figure("streams_finished_after_sigterm_s", round(finished_in, 3))
        self.figure("process_exited_after_sigterm_s", round(time.monotonic() - signalled, 3))


class DeployFilesTests(unittest.TestCase):
    """The example files say what the deployment needs (no nginx or systemd required)."""

    def setUp(self) -> None:
        with open(EXAMPLE_CONFIG, encoding="utf-8") as handle:
            self.text = handle.read()
        self.config = parse(self.text)
        http_block = named(self.config, "http")[0].block or []
        servers = [s for s in named(http_block, "server") if any(d.name == "proxy_pass" for d in walk(s.block))]
        self.assertEqual(len(servers), 1)
        self.location = next(d for d in servers[0].block if d.name == "location" and d.args == ["/"])
        self.http = http_block

    def directive(self, name: str) -> list[str]:
        found = named(self.location.block, name)
        self.assertEqual(len(found), 1, name)
        return found[0].args

    def test_stream_directives(self):
        self.assertEqual(self.directive("proxy_http_version"), ["1.1"])
        headers = {d.args[0]: d.args[1] for d in named(self.location.block, "proxy_set_header")}
        self.assertEqual(headers["Connection"], '""')
        self.assertEqual(headers["X-Forwarded-For"], "$proxy_add_x_forwarded_for")
        self.assertEqual(headers["X-Forwarded-Proto"], "$scheme")
        read_timeout = int(self.directive("proxy_read_timeout")[0].rstrip("s"))
        defaults = ProxyConfig()
        self.assertGreater(read_timeout, defaults.heartbeat_seconds)
        self.assertGreater(read_timeout, defaults.upstream_idle_seconds)
        # Buffering stays at nginx's default; the proxy's X-Accel-Buffering: no does the work.
        for directive in walk(self.config):
            self.assertNotIn(directive.name, ("proxy_buffering", "proxy_cache", "chunked_transfer_encoding"))
        self.assertEqual(named(self.http, "gzip")[0].args, ["on"])
        self.assertNotIn("text/event-stream", named(self.http, "gzip_types")[0].args)

    def test_balancing_directives(self):
        upstream = next(d for d in self.http if d.name == "upstream")
        servers = named(upstream.block, "server")
        self.assertGreaterEqual(len(servers), 2)
        for server in servers:
            self.assertTrue(any(arg.startswith("max_fails=") for arg in server.args), server.args)
        # nginx drops an idle connection before the proxy would, never reusing one being closed.
        keepalive_timeout = named(upstream.block, "keepalive_timeout")[0].args[0]
        self.assertLess(int(keepalive_timeout.rstrip("s")), ProxyConfig().request_timeout_seconds)
        self.assertTrue({"error", "timeout"} <= set(self.directive("proxy_next_upstream")))
        self.assertEqual(self.directive("proxy_pass"), ["http://gloo_proxy"])
        body_limit = next(d for d in walk(self.config) if d.name == "client_max_body_size").args[0]
        self.assertEqual(int(body_limit.rstrip("m")) * 1024 * 1024, ProxyConfig().max_body_bytes)

    def test_derived_config_changes_only_addresses_paths_and_tls(self):
        sites = [Site("a", 1, (2, 3)), Site("b", 4, (5, 6))]
        derived = parse(derived_config(self.text, "/prefix", sites))
        http_block = named(derived, "http")[0].block
        servers = named(http_block, "server")
        self.assertEqual(len(servers), 2)
        example_server = next(s for s in named(self.http, "server") if any(d.name == "proxy_pass"
                                                                           for d in walk(s.block)))
        for site, server in zip(sites, servers):
            self.assertEqual(named(server.block, "listen")[0].args, [f"127.0.0.1:{site.port}"])
            expected = [(d.name, d.args) for d in example_server.block
                        if d.name != "listen" and not d.name.startswith("ssl_") and d.name != "location"]
            self.assertEqual([(d.name, d.args) for d in server.block if d.name not in ("listen", "location")],
                             expected)
            for mine, theirs in zip(named(server.block, "location"), named(example_server.block, "location")):
                self.assertEqual(mine.args, theirs.args)
                rename = {"http://gloo_proxy": f"http://gloo_proxy_{site.name}"}
                self.assertEqual([(d.name, d.args) for d in mine.block],
                                 [(d.name, [rename.get(a, a) for a in d.args]) for d in theirs.block])
        upstreams = named(http_block, "upstream")
        self.assertEqual([u.args for u in upstreams], [["gloo_proxy_a"], ["gloo_proxy_b"]])
        example_upstream = named(self.http, "upstream")[0]
        params = named(example_upstream.block, "server")[0].args[1:]
        self.assertEqual([d.args for d in named(upstreams[1].block, "server")],
                         [["127.0.0.1:5"] + params, ["127.0.0.1:6"] + params])
        self.assertEqual([(d.name, d.args) for d in upstreams[1].block if d.name not in ("server", "zone")],
                         [(d.name, d.args) for d in example_upstream.block if d.name not in ("server", "zone")])
        for directive in walk(derived):
            for arg in directive.args:
                self.assertFalse(arg.startswith(("/var/", "/run/", "/etc/")), (directive.name, arg))


class SystemdUnitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.entries: list[tuple[str, str, str]] = []
        section = ""
        with open(SYSTEMD_UNIT, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line or line.startswith(("#", ";")):
                    continue
                if line.startswith("["):
                    section = line.strip("[]")
                    continue
                key, _, value = line.partition("=")
                self.entries.append((section, key.strip(), value.strip()))

    def value(self, key: str) -> str:
        values = [v for _, k, v in self.entries if k == key]
        self.assertEqual(len(values), 1, key)
        return values[0]

    def test_service_settings(self):
        self.assertEqual(self.value("Restart"), "on-failure")
        self.assertTrue(self.value("EnvironmentFile"))
        self.assertNotIn(self.value("User"), ("", "root", "0"))
        self.assertEqual(self.value("KillSignal"), "SIGTERM")
        for key, expected in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes")):
            with self.subTest(key=key):
                self.assertEqual(self.value(key), expected)

    def test_stop_timeout_fits_the_drain(self):
        command = shlex.split(self.value("ExecStart"))
        self.assertTrue(command[1].endswith("proxy_server.py"))
        args = _build_parser().parse_args(command[2:])  # the flags are ones the proxy accepts
        self.assertIsNotNone(args.drain_seconds)
        stop_timeout = float(self.value("TimeoutStopSec").rstrip("s"))
        self.assertGreater(stop_timeout, args.drain_seconds + 5)

    def test_systemd_accepts_it(self):
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            self.skipTest("systemd-analyze is not installed")
        with tempfile.TemporaryDirectory() as folder:
            template = os.path.join(folder, "gloo-proxy@.service")
            shutil.copyfile(SYSTEMD_UNIT, template)
            result = subprocess.run([analyze, "verify", os.path.join(folder, "gloo-proxy@3001.service")],
                                    capture_output=True, text=True, timeout=60)
        complaints = [line for line in (result.stdout + result.stderr).splitlines() if "gloo-proxy@" in line]
        self.assertEqual(complaints, [])


if __name__ == "__main__":
    unittest.main()
