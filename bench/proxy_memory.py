"""Benchmark: Python memory held per relayed stream, measured with tracemalloc (not RSS).

RSS on a shared machine moves by megabytes between runs; the traced allocations of N open
slow streams (simulator and proxy in this process, on loopback) do not. Run it in two
checkouts to compare them:

    python bench/proxy_memory.py [N]
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import tracemalloc

sys.path.insert(0, os.getcwd())  # the checkout being measured
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "*"

from fake_gloo import FakeGloo  # noqa: E402
from proxy_server import ProxyConfig, ProxyServer  # noqa: E402


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    fake = FakeGloo()
    fake.start()
    config = ProxyConfig(port=0, client_id=fake.client_id, client_secret=fake.client_secret,
                         token_url=fake.token_url, api_url=fake.api_url, rate_limit_per_minute=0,
                         max_streams=count + 10)
    proxy = ProxyServer(config, log_handler=logging.NullHandler())
    proxy.start()
    body = json.dumps({"messages": [{"role": "user", "content": "Hi [[slow:0.3]] [[long:12]]"}]}).encode()
    request = (b"POST /api/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    try:
        warm = socket.create_connection(proxy.server_address[:2])  # the token and first imports, untraced
        warm.sendall(request.replace(b"Host: x", b"Host: x\r\nConnection: close"))
        while warm.recv(65536):
            pass
        warm.close()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        socks = [socket.create_connection(proxy.server_address[:2]) for _ in range(count)]
        for sock in socks:
            sock.sendall(request)
        deadline = time.monotonic() + 20
        while proxy.active_streams < count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)  # every stream past its first events
        held = tracemalloc.get_traced_memory()[0] - before
        print(f"{proxy.active_streams} of {count} streams open: {held / count / 1024:.1f} KiB traced per stream "
              "(proxy and simulator together)")
        for sock in socks:
            sock.close()
    finally:
        proxy.close()
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
