"""Benchmark: the page's streaming renderer (web/render.js) on long answers, in headless Chromium.

Each answer (about 120 KB: short paragraphs, one long list, one long table, mixed markdown) is fed
to an `AnswerView` as a stream is: the text so far, `--step` characters more each time (one
animation frame's worth of a fast stream). Printed per answer: the time spent in `update()`
in total and its longest call, and the ratio of each total to the paragraphs' total, measured in
the same browser in one run (the machines are shared: compare the ratios, not the times).
Then the time from navigation to the page being ready (its modules loaded and run), median of
`--loads` loads, each in a fresh browser context (nothing cached).

    python bench/page.py [--kib 120] [--step 200] [--web-root web]

`--web-root` points at another copy of the page's files (an older render.js, say) to compare.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.page_support import proxy_config, start_browser  # noqa: E402 - after the path is set

from fake_gloo import FakeGloo  # noqa: E402
from proxy_server import ProxyServer  # noqa: E402

_FEED_JS = """async ([docs, step]) => {
  const { AnswerView } = await import('/render.js');
  const sandbox = document.createElement('div');
  document.body.appendChild(sandbox);
  const out = {};
  for (const [name, doc] of Object.entries(docs)) {
    const view = new AnswerView(sandbox);
    let total = 0, longest = 0, calls = 0;
    for (let end = step; end < doc.length + step; end += step) {
      const started = performance.now();
      view.update(doc.slice(0, Math.min(end, doc.length)));
      const took = performance.now() - started;
      total += took;
      longest = Math.max(longest, took);
      calls++;
    }
    view.finish(doc);
    out[name] = {total, longest, calls, chars: doc.length};
  }
  sandbox.remove();
  return out;
}"""


def _answers(size: int) -> dict[str, str]:
    def grow(make: object) -> str:
        parts, n, length = [], 0, 0
        while length < size:
            piece = make(n)  # type: ignore[operator]
            parts.append(piece)
            length += len(piece)
            n += 1
        return "".join(parts)

    return {
        "paragraphs": grow(lambda n: f"A short paragraph {n} with **bold** and `code`, then more plain words.\n\n"),
        "list": grow(lambda n: f"{n + 1}. An item {n} with **bold** and `code`, then more plain words\n"),
        "table": "| n | item | note |\n|---|:--|--:|\n" + grow(lambda n: f"| {n} | item **{n}** | `code` words |\n"),
        "mixed": grow(lambda n: f"## Part {n}\n\nWords **{n}**.\n\n- a {n}\n- b\n\n"
                                f"| x | y |\n|---|---|\n| {n} | z |\n\n"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kib", type=int, default=120, help="size of each answer in KiB (default 120)")
    parser.add_argument("--step", type=int, default=200, help="characters added per update (default 200)")
    parser.add_argument("--web-root", default=os.path.join(ROOT, "web"), help="the page's files (default web/)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best total of each answer is kept")
    parser.add_argument("--loads", type=int, default=15, help="page loads timed, each in a fresh context")
    args = parser.parse_args()
    answers = _answers(args.kib * 1024)
    playwright, browser = start_browser()
    try:
        with FakeGloo() as fake, ProxyServer(proxy_config(fake, web_root=os.path.abspath(args.web_root))) as proxy:
            page = browser.new_page()
            page.goto(proxy.url + "/")
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for name, figures in page.evaluate(_FEED_JS, [answers, args.step]).items():
                    if name not in best or figures["total"] < best[name]["total"]:
                        best[name] = figures
            ready_ms = []
            for _ in range(args.loads):
                context = browser.new_context()
                fresh = context.new_page()
                started = time.perf_counter()
                fresh.goto(proxy.url + "/", wait_until="commit")
                fresh.wait_for_function("() => document.documentElement?.dataset.ready === 'true'")
                ready_ms.append((time.perf_counter() - started) * 1000)
                context.close()
    finally:
        browser.close()
        playwright.stop()
    print(f"# bench/page.py  {time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} CPUs  "
          f"Chromium headless  web root {os.path.relpath(args.web_root, ROOT)}")
    print(f"# {args.kib} KiB answers, {args.step} characters per update, best of {args.rounds} rounds")
    base = best["paragraphs"]["total"]
    print(f"{'answer':<12}{'updates':>9}{'total ms':>11}{'longest ms':>12}{'x paragraphs':>14}")
    for name, figures in best.items():
        print(f"{name:<12}{figures['calls']:>9}{figures['total']:>11.0f}{figures['longest']:>12.1f}"
              f"{figures['total'] / base:>14.2f}")
    print(f"page ready after navigation: median {statistics.median(ready_ms):.0f} ms, "
          f"fastest {min(ready_ms):.0f} ms ({args.loads} loads, a fresh context each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
