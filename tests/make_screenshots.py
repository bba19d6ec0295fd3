#!/usr/bin/env python3
"""Take the README's screenshots of the chat page in use (not part of the test run).

    python tests/make_screenshots.py [--out docs] [--scheme light|dark]

Starts the simulator and the proxy on loopback, scripts two answers (a markdown answer and a
follow-up with a code block), asks both questions in Chromium, and saves
docs/screenshot-desktop.png (1280x800, the finished conversation) and docs/screenshot-phone.png
(390x844, the follow-up answer while it is still streaming).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.page_support import REPO, serving, start_browser  # noqa: E402

QUESTIONS = (
    "What does discipleship look like day to day?",
    "Could you suggest a simple reading plan I could keep track of in code?",
)
ANSWERS = (
    "## Everyday discipleship\n\n"
    "Discipleship is **a whole way of life**, shaped by *grace* rather than performance. Most "
    "traditions describe a rhythm of a few simple practices:\n\n"
    "1. **Prayer**: a few honest minutes, morning and evening\n"
    "2. **Scripture**: reading slowly, a short passage at a time\n"
    "3. **Community**: worship, shared meals and mutual care\n\n"
    "- Serve someone during the week\n"
    "- Keep a day of rest\n\n"
    "The point is not a checklist but a life slowly formed by love of God and neighbour.",
    "### A four-week plan\n\n"
    "Start small: one Gospel, a chapter a day. A plan can live in a `plan.py` file:\n\n"
    "```python\n"
    "PLAN = [\"Mark 1\", \"Mark 2\", \"Mark 3\", \"Mark 4\"]\n\n"
    "def reading_for(day: int) -> str:\n"
    "    return PLAN[day % len(PLAN)]\n"
    "```\n\n"
    "Mark the days you read, and *don't* worry about the ones you miss. For background on each "
    "book, see [the Bible Project](https://bibleproject.com).",
)
_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")


def _event(delta: dict, finish: object = None) -> bytes:
    chunk = {"id": "chatcmpl-screenshot", "object": "chat.completion.chunk", "created": int(time.time()),
             "model": "gloo-openai-gpt-5-mini", "provider": "openai",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _writes(text: str) -> List[bytes]:
    writes = [_event({"role": "assistant", "content": ""})]
    writes += [_event({"content": token}) for token in _TOKEN.findall(text)]
    writes.append(_event({}, "stop"))
    return writes


def _script(fake, text: str, delay: float) -> None:
    fake.enqueue(200, {"Content-Type": "text/event-stream"}, _writes(text), delay=delay)


def _ask(page, question: str) -> None:
    page.fill("#prompt", question)
    page.click("#sendBtn")


def _wait_done(page) -> None:
    page.wait_for_function("() => document.getElementById('status').textContent === 'Done'", timeout=30000)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "docs"), help="folder for the PNG files")
    parser.add_argument("--scheme", default="light", choices=("light", "dark"))
    parser.add_argument("--suffix", default="", help="added to the file names, e.g. -dark")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    playwright, browser = start_browser()
    try:
        with serving() as (fake, proxy):
            # Desktop: the whole conversation, finished.
            context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme=args.scheme,
                                          device_scale_factor=1)
            page = context.new_page()
            page.goto(proxy.url + "/")
            for question, answer in zip(QUESTIONS, ANSWERS):
                _script(fake, answer, 0.012)
                _ask(page, question)
                _wait_done(page)
            page.mouse.move(0, 0)
            page.evaluate("() => window.scrollTo(0, document.documentElement.scrollHeight)")
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            time.sleep(0.4)  # let the buttons' colour transitions finish
            desktop = os.path.join(args.out, f"screenshot-desktop{args.suffix}.png")
            page.screenshot(path=desktop)
            context.close()

            # Phone: the follow-up answer caught while it streams (cursor and live figures showing).
            context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme=args.scheme,
                                          device_scale_factor=2, is_mobile=True, has_touch=True)
            page = context.new_page()
            page.goto(proxy.url + "/")
            _script(fake, ANSWERS[0], 0.005)
            _ask(page, QUESTIONS[0])
            _wait_done(page)
            _script(fake, ANSWERS[1], 0.06)
            _ask(page, QUESTIONS[1])
            page.wait_for_function("() => document.querySelectorAll('#output pre').length > 0 && "
                                   "document.querySelector('#output pre').textContent.includes('return')",
                                   timeout=30000)
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            page.evaluate("() => window.scrollTo(0, document.documentElement.scrollHeight)")
            phone = os.path.join(args.out, f"screenshot-phone{args.suffix}.png")
            page.screenshot(path=phone)
            page.click("#stopBtn")
            context.close()
    finally:
        browser.close()
        playwright.stop()
    print(desktop)
    print(phone)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
