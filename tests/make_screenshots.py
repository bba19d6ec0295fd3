#!/usr/bin/env python3
"""Take the README's screenshots of the chat page in use (not part of the test run).

    python tests/make_screenshots.py [--out docs]

Starts the simulator and the proxy on loopback, scripts two answers (a grounded markdown answer
with a table, a quote and sources; a follow-up with a code block and a task list), asks both in
Chromium, and saves docs/screenshot-desktop.png (1280x800, the finished conversation),
docs/screenshot-dark.png (the same in the dark scheme), docs/screenshot-phone.png (390x844,
the follow-up while it is still streaming) and docs/screenshot-responses.png (the Responses API:
a reasoning summary and a generated image).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.page_support import REPO, serving, start_browser  # noqa: E402

MODEL = "gloo-anthropic-claude-sonnet-4.5"
QUESTIONS = (
    "What does discipleship look like day to day?",
    "Could you suggest a simple reading plan I could keep track of in code?",
)
ANSWERS = (
    "## Everyday discipleship\n\n"
    "Discipleship is **a whole way of life**, shaped by *grace* rather than performance. Most "
    "traditions describe a rhythm of a few simple practices:\n\n"
    "| Practice | When | Time |\n|:--|:--:|--:|\n| Prayer | morning and evening | 10 min |\n"
    "| Scripture | daily | 15 min |\n| Community | weekly | 2 h |\n\n"
    "> Follow me, and I will make you fishers of men.\n\n"
    "The point is not a checklist but a life slowly formed by love of God and neighbour.",
    "### A four-week plan\n\n"
    "Start small: one Gospel, a chapter a day. A plan can live in a `plan.py` file:\n\n"
    "```python\n"
    "PLAN = [\"Mark 1\", \"Mark 2\", \"Mark 3\", \"Mark 4\"]\n\n"
    "def reading_for(day: int) -> str:\n"
    "    # one chapter a day, starting over after the last\n"
    "    return PLAN[day % len(PLAN)]\n"
    "```\n\n"
    "- [x] Week 1: Mark 1\u20134\n- [ ] Week 2: Mark 5\u20138\n\n"
    "At $c$ chapters a day, Mark's 16 chapters take $\\frac{16}{c}$ days. "
    "Mark the days you read, and *don't* worry about the ones you miss. For background on each "
    "book, see [the Bible Project](https://bibleproject.com).",
)
CITATIONS = [
    {"title": "The Cost of Discipleship", "url": "https://example.org/cost-of-discipleship",
     "publisher": "GlooGrounded"},
    {"title": "Spiritual practices for ordinary days", "url": "https://example.org/practices",
     "publisher": "GlooGrounded"},
]
_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")


def _event(**chunk: object) -> bytes:
    body = {"id": "chatcmpl-screenshot", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": MODEL, "provider": "anthropic"}
    body.update(chunk)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _delta(delta: dict, finish: object = None) -> bytes:
    return _event(choices=[{"index": 0, "delta": delta, "finish_reason": finish}])


def _writes(text: str, grounded: bool) -> list[bytes]:
    writes = [_event(choices=[], sources_returned=True, citations=CITATIONS)] if grounded else []
    writes.append(_delta({"role": "assistant", "content": ""}))
    writes += [_delta({"content": token}) for token in _TOKEN.findall(text)]
    writes.append(_delta({}, "stop"))
    return writes


def _script(fake, index: int, delay: float) -> None:
    fake.enqueue(200, {"Content-Type": "text/event-stream"}, _writes(ANSWERS[index], index == 0), delay=delay)


def _open(browser, proxy, **options):
    context = browser.new_context(device_scale_factor=options.pop("scale", 1), **options)
    # The answers come from the simulator, so the page says so (the relay's /health "simulator" key).
    def health(route):
        response = route.fetch()
        data = response.json()
        data["simulator"] = True
        route.fulfill(response=response, body=json.dumps(data))
    context.route("**/health", health)
    page = context.new_page()
    page.goto(proxy.url + "/")
    page.wait_for_function("() => document.documentElement.dataset.ready === 'true'")
    page.wait_for_selector("#simBadge", state="visible")
    return context, page


def _ask(page, question: str) -> None:
    page.fill("#prompt", question)
    page.click("#sendBtn")


def _wait_done(page) -> None:
    page.wait_for_function("() => document.getElementById('status').textContent === 'Done'", timeout=30000)


def _settle(page) -> None:
    page.mouse.move(0, 0)
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.evaluate("() => window.scrollTo(0, document.documentElement.scrollHeight)")
    time.sleep(0.4)  # let the buttons' colour transitions finish


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "docs"), help="folder for the PNG files")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    written = []

    playwright, browser = start_browser()
    try:
        with serving() as (fake, proxy):
            # Desktop, light and dark: the whole conversation, finished, the latest answer in view.
            for scheme, name in (("light", "screenshot-desktop.png"), ("dark", "screenshot-dark.png")):
                context, page = _open(browser, proxy, viewport={"width": 1280, "height": 800}, color_scheme=scheme)
                page.click("#instructions summary")
                page.fill("#systemPrompt", "Answer warmly and practically, for someone new to faith.")
                page.click("#instructions summary")  # collapsed again: its preview shows
                for index, question in enumerate(QUESTIONS):
                    _script(fake, index, 0.004)
                    _ask(page, question)
                    _wait_done(page)
                _script(fake, 1, 0.004)  # the last answer regenerated: two versions, ‹ 2/2 ›
                page.click("#turns .turn:last-child .regen-btn")
                _wait_done(page)
                _settle(page)
                if scheme == "dark":  # the first answer's table, quote and sources
                    page.evaluate("() => document.querySelector('#turns .turn').scrollIntoView()")
                    page.evaluate("() => window.scrollBy(0, -70)")
                    time.sleep(0.2)
                path = os.path.join(args.out, name)
                page.screenshot(path=path)
                written.append(path)
                context.close()

            # Phone: the follow-up answer caught while it streams (cursor and live figures showing).
            context, page = _open(browser, proxy, viewport={"width": 390, "height": 844}, color_scheme="light",
                                  scale=2, is_mobile=True, has_touch=True)
            _script(fake, 0, 0.002)
            _ask(page, QUESTIONS[0])
            _wait_done(page)
            _script(fake, 1, 0.06)
            _ask(page, QUESTIONS[1])
            page.wait_for_function("() => { const pre = document.querySelector('#output pre');"
                                   " return pre && pre.textContent.includes('return'); }", timeout=30000)
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            page.evaluate("() => window.scrollTo(0, document.documentElement.scrollHeight)")
            path = os.path.join(args.out, "screenshot-phone.png")
            page.screenshot(path=path)
            written.append(path)
            page.click("#sendBtn")  # Stop
            context.close()

            # The Responses API: a reasoning model's collapsible summary and an image it made.
            context, page = _open(browser, proxy, viewport={"width": 1280, "height": 800}, color_scheme="light")
            page.select_option("#api", "responses")
            page.select_option("#responseModel", "gloo-openai-gpt-5")
            page.check("#drawing")
            _ask(page, "Draw a simple cross for a children's Sunday school sheet")
            _wait_done(page)
            page.click(".reasoning summary")  # opened, to show what it holds
            _settle(page)
            path = os.path.join(args.out, "screenshot-responses.png")
            page.screenshot(path=path)
            written.append(path)
            context.close()
    finally:
        browser.close()
        playwright.stop()
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
