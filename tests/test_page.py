"""The chat page (web/) in a real browser: Chromium driven by Playwright, served by the proxy
relaying the simulator. One browser and one proxy for the module (in each test process that runs
some of it); one tab that most tests reuse, its storage cleared for each, and a fresh browser
context for a test that needs its own (routes, permissions, several tabs, another shape).

Skipped when Chromium or Playwright is missing, unless CI=true (then it fails): see page_support.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import unittest
from collections.abc import Sequence
from typing import Any

import fake_gloo
from tests.page_support import serving, start_browser
from tests.support import chunk, clean_environment, sse

FAILURE_DIR = "/tmp/page-failures"
FINISHED_JS = """() => {
  const s = document.getElementById('status').textContent;
  return s === 'Done' || s.startsWith('Done (') || s === 'Stopped' || s.startsWith('Error: ');
}"""
ALLOWED_TAGS = ["H1", "H2", "H3", "H4", "H5", "H6", "P", "STRONG", "EM", "DEL", "CODE", "PRE", "OL", "UL", "LI",
                "A", "BR", "HR", "BLOCKQUOTE", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD", "SUP", "SPAN", "DIV",
                "BUTTON", "INPUT",
                # MathML (web/math.js's MATH_TAGS), drawn by the browser itself
                "math", "mrow", "mi", "mn", "mo", "msup", "msub", "msubsup", "mfrac", "msqrt", "mroot", "mtext",
                "mspace", "mtable", "mtr", "mtd", "munderover", "munder", "mover"]
# The answer's figures; its cost once the relay has the model catalog (fetched in the background).
META = re.compile(r"^(\d+) tokens? \u2022 \d+ ms \u2022 first token \d+ ms \u2022 \d+\.\d tokens/s"
                  r"( \u2022 (\$[0-9.]+|< \$0\.000001))?$")

# Every element or attribute under `root` that the safe renderer must never make: only the allowed
# tags, BUTTON only as a code block's Copy, INPUT only as a disabled task checkbox, href only http(s).
FORBIDDEN_JS = """([root, allowed]) => {
  const bad = [];
  const okAttr = (el, name, value) => {
    const tag = el.tagName;
    if (name === 'href') return tag === 'A' && /^https?:\\/\\//.test(value);
    if (name === 'rel') return tag === 'A' && value === 'noopener noreferrer';
    if (name === 'target') return tag === 'A' && value === '_blank';
    if (name === 'title') return tag === 'A' || (tag === 'SPAN' && el.classList.contains('bidi-mark'));
    if (name === 'class') return /^[a-z0-9 _.+#-]+$/i.test(value);
    if (name === 'start') return tag === 'OL' && /^[0-9]+$/.test(value);
    if (name === 'type') return (tag === 'BUTTON' && value === 'button') || (tag === 'INPUT' && value === 'checkbox');
    if (name === 'disabled' || name === 'checked') return tag === 'INPUT';
    if (name === 'aria-label') return tag === 'INPUT' || tag === 'BUTTON';
    if (['display', 'mathvariant', 'width', 'linethickness', 'columnalign'].includes(name)) {
      return el.namespaceURI === 'http://www.w3.org/1998/Math/MathML' && /^[a-z0-9.-]+$/.test(value);
    }
    return false;
  };
  for (const el of root.querySelectorAll('*')) {
    const tag = el.tagName;
    if (!allowed.includes(tag)) bad.push('element ' + tag);
    if (tag === 'BUTTON' && !el.classList.contains('copy-code')) bad.push('button ' + el.className);
    if (tag === 'INPUT' && !(el.type === 'checkbox' && el.disabled)) bad.push('input ' + el.type);
    for (const attr of el.attributes) {
      if (!okAttr(el, attr.name, attr.value)) bad.push(tag + ' ' + attr.name + '=' + attr.value);
    }
    if (tag === 'A' && !(el.getAttribute('href') && el.rel && el.target)) bad.push('bare link');
    if (tag === 'A' && el.parentElement && el.parentElement.closest('a')) bad.push('link inside a link');
  }
  return bad;
}"""
READY_JS = "() => document.documentElement?.dataset.ready === 'true'"  # no element yet right after commit
CHAT_TITLES_JS = "() => [...document.querySelectorAll('#chatList .chat-title')].map((e) => e.textContent)"


def answer_writes(text: str, *, per_write: int = 1, first: Sequence[bytes] = (), model: str = "gloo-test-model",
                  finish: str = "stop") -> list[bytes]:
    """The writes of a scripted stream answering `text`, word by word, `per_write` events per write."""
    words = re.findall(r"\s*\S+|\s+", text)
    events = [sse(chunk(w, model=model)) for w in words]
    writes = list(first) + [sse(chunk(delta={"role": "assistant", "content": ""}, model=model))]
    writes += [b"".join(events[i:i + per_write]) for i in range(0, len(events), per_write)]
    writes.append(sse(chunk(None, finish, model=model)))
    return writes

_playwright: Any = None
_browser: Any = None
_stack: list[Any] = []


def setUpModule() -> None:
    global _playwright, _browser
    _playwright, _browser = start_browser()


def tearDownModule() -> None:
    _watchers.clear()
    for server in reversed(_stack):
        server.__exit__(None, None, None)
    _stack.clear()
    if _browser is not None:
        _browser.close()
    if _playwright is not None:
        _playwright.stop()


# The module's one tab: most tests need just a page of the default shape with empty storage, and a
# new context and tab cost a renderer process each. Its init script clears the origin's storage on a
# navigation that carries _FRESH_QUERY (and takes the query off the address before the page runs).
_FRESH_QUERY = "gloo-test-fresh"
_tab: Any = None
_watchers: dict[Any, Any] = {}  # page -> the test that collects its errors and dialogs now
_CLEAR_ON_FRESH = f"""(() => {{
  if (location.search === '?{_FRESH_QUERY}') {{
    localStorage.clear();
    sessionStorage.clear();
    history.replaceState(null, '', location.pathname);
  }}
}})();"""


def _new_context(*, width: int = 1280, height: int = 800, color_scheme: str = "light", touch: bool = False) -> Any:
    options: dict[str, Any] = dict(viewport={"width": width, "height": height}, color_scheme=color_scheme)
    if touch:
        options.update(is_mobile=True, has_touch=True)
    return _browser.new_context(**options)


def _shared_tab() -> Any:
    """The module's tab, alone in its context (any other page a test opened there is closed)."""
    global _tab
    if _tab is None or _tab.is_closed():
        context = _new_context()
        context.add_init_script(_CLEAR_ON_FRESH)
        _tab = context.new_page()
        _tab.set_default_timeout(8000)
    for other in _tab.context.pages:
        if other is not _tab:
            other.close()
    return _tab


def _watch(page: Any, test: Any) -> None:
    """Send `page`'s uncaught errors, console errors and dialogs to `test` (from now on; to no one
    once the test has let the page go)."""
    known = page in _watchers
    _watchers[page] = test
    if known:
        return

    def collect(kind: str, text: str) -> None:
        watcher = _watchers.get(page)
        if watcher is not None:
            getattr(watcher, kind).append(text)

    def on_dialog(dialog: Any) -> None:
        collect("dialogs", f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("pageerror", lambda error: collect("page_errors", str(error)))
    page.on("console", lambda message: message.type == "error" and collect("console_errors", message.text))
    page.on("dialog", on_dialog)


def _serve(**options: Any):
    manager = serving(**options)
    servers = manager.__enter__()
    _stack.append(manager)
    return servers


class PageTestCase(unittest.TestCase):
    """Opens pages on the module's proxy; records page errors, console errors and dialogs."""

    fake: Any = None
    proxy: Any = None

    @classmethod
    def setUpClass(cls) -> None:
        cls._environ = dict(os.environ)
        os.environ.clear()
        os.environ.update(clean_environment())
        if PageTestCase.fake is None:
            PageTestCase.fake, PageTestCase.proxy = _serve()

    @classmethod
    def tearDownClass(cls) -> None:
        os.environ.clear()
        os.environ.update(cls._environ)

    def setUp(self) -> None:
        # A scripted answer left by a failed test must not answer the next test's question.
        script = getattr(self.fake, "_script", None)
        if script is not None:
            script.clear()
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.dialogs: list[str] = []

    def open_page(self, proxy: Any = None, *, width: int = 1280, height: int = 800,
                  color_scheme: str = "light", context: Any = None, touch: bool = False) -> Any:
        """The page, loaded and ready. With the default shape and no context of the test's own, it is
        the module's one tab, its storage cleared first (a new tab costs a renderer process each
        time); otherwise a new page in `context` (or in a fresh context of that shape)."""
        url = (proxy or self.proxy).url + "/"
        shared = context is None and (width, height, color_scheme, touch) == (1280, 800, "light", False)
        if shared:
            page = _shared_tab()
            url += "?" + _FRESH_QUERY  # the tab's init script clears the origin's storage, then drops this
        else:
            if context is None:
                context = self.new_context(width=width, height=height, color_scheme=color_scheme, touch=touch)
            page = context.new_page()
            page.set_default_timeout(8000)
            self.addCleanup(_watchers.pop, page, None)  # (the module's tab stays watched)
        _watch(page, self)
        self.addCleanup(self._screenshot_on_failure, page)
        # Not the load event: the module script marks the page ready once it has run, and module
        # scripts run only after the document and its stylesheets are in.
        page.goto(url, wait_until="commit")
        page.wait_for_function(READY_JS)
        return page

    def new_context(self, *, width: int = 1280, height: int = 800, color_scheme: str = "light",
                    touch: bool = False) -> Any:
        """A fresh browser context (its own localStorage), closed when the test ends."""
        context = _new_context(width=width, height=height, color_scheme=color_scheme, touch=touch)
        self.addCleanup(context.close)
        return context

    def _screenshot_on_failure(self, page: Any) -> None:
        # unittest resets its success flag for each cleanup, so look at what the result recorded.
        result = getattr(getattr(self, "_outcome", None), "result", None)
        recorded = list(getattr(result, "failures", [])) + list(getattr(result, "errors", []))
        if any(test is self or getattr(test, "test_case", None) is self for test, _ in recorded):
            os.makedirs(FAILURE_DIR, exist_ok=True)
            try:
                page.screenshot(path=os.path.join(FAILURE_DIR, self.id().rsplit(".", 2)[-1] + ".png"),
                                full_page=True)
            except Exception:  # the page may be gone; the test's own failure is what matters
                pass

    # -- driving the page -----------------------------------------------------

    def ask(self, page: Any, prompt: str, *, wait: bool = True) -> str:
        """Type `prompt`, press Send, and (by default) wait for the answer to end; returns #status."""
        page.fill("#prompt", prompt)
        page.click("#sendBtn")
        if not wait:
            return page.text_content("#status")
        return self.wait_finished(page)

    def wait_finished(self, page: Any) -> str:
        page.wait_for_function(FINISHED_JS)
        return page.text_content("#status")

    def last_request(self) -> dict[str, Any]:
        return self.fake.requests[-1]["body"]

    def turns(self, page: Any) -> list[list[str]]:
        """[question, answer text] of every turn on screen."""
        return page.evaluate("""() => [...document.querySelectorAll('#turns .turn')].map((t) => [
            t.querySelector('.question-text').textContent, t.querySelector('.answer').textContent])""")

    def script(self, text: str, *, delay: float = 0.0, **options: Any) -> None:
        """The next completion answers `text` (see answer_writes), `delay` seconds between writes."""
        self.fake.enqueue(200, {"Content-Type": "text/event-stream"}, answer_writes(text, **options), delay=delay)

    def assertNoErrors(self, *, allow_failed_resource: bool = False) -> None:
        console = [text for text in self.console_errors
                   if not (allow_failed_resource and text.startswith("Failed to load resource"))]
        self.assertEqual(self.page_errors, [], "uncaught errors in the page")
        self.assertEqual(console, [], "console errors")
        self.assertEqual(self.dialogs, [], "dialogs opened")


GFM_ANSWER = (
    "# Big heading\n\n"
    "| Book | Chapters | Focus |\n|:-----|:--------:|------:|\n| Mark | 16 | **action** |\n| John | 21 | `signs` |\n\n"
    "> Outer quote\n> > Inner quote\n\n"
    "---\n\n"
    "This is ~~wrong~~ right.\n\n"
    "- [x] Read Mark 1\n- [ ] Read Mark 2\n\n"
    "![A map of Galilee](https://example.org/galilee.png)\n\n"
    "A claim with a note.[^1]\n\n"
    "[^1]: The note itself."
)


class StreamingTest(PageTestCase):

    def test_text_appears_while_the_answer_is_still_streaming(self):
        words = "one two three four five six"
        page = self.open_page()
        self.ask(page, "[[slow:0.15]] [[echo]] " + words, wait=False)
        # One snapshot, taken in the page the moment the first words show, so nothing races it.
        snapshot = page.wait_for_function("""() => {
          const $ = (id) => document.getElementById(id);
          const text = $('output') && $('output').textContent;
          if (!text || !text.trim()) return null;
          return {text, status: $('status').textContent, button: $('sendBtn').textContent,
                  cursors: $('output').querySelectorAll('.cursor').length, busy: $('output').getAttribute('aria-busy')};
        }""").json_value()
        partial = snapshot.pop("text")
        self.assertEqual(snapshot, {"status": "Streaming\u2026", "button": "Stop", "cursors": 1, "busy": "true"})

        self.assertEqual(self.wait_finished(page), "Done")
        self.assertEqual(page.text_content("#output"), words)
        self.assertTrue(words.startswith(partial.strip()) and len(partial.strip()) < len(words),
                        f"partial {partial!r} should be a strict prefix of the answer")
        self.assertEqual(page.locator("#output .cursor").count(), 0)
        meta = page.text_content("#meta")
        self.assertRegex(meta, META)
        self.assertEqual(int(META.match(meta).group(1)), 6)
        self.assertEqual(page.text_content("#sendBtn"), "Send")
        self.assertEqual(page.get_attribute("#output", "aria-busy"), "false")
        self.assertEqual(self.last_request()["messages"],
                         [{"role": "user", "content": "[[slow:0.15]] [[echo]] " + words}])
        self.assertNoErrors()

    def test_markdown_answer_becomes_the_right_elements(self):
        page = self.open_page()
        self.assertEqual(self.ask(page, "[[markdown]]"), "Done")
        shape = page.evaluate("""() => {
          const out = document.getElementById('output');
          const texts = (sel) => [...out.querySelectorAll(sel)].map((e) => e.textContent);
          const link = out.querySelector('a');
          return {
            blocks: [...out.children].map((e) => e.tagName + (e.className ? '.' + e.className : '')),
            h1: texts('h1'), strong: texts('strong'), em: texts('em'), code: texts(':not(pre) > code'),
            pre: texts('pre > code'), preClass: out.querySelector('pre > code').className,
            lang: texts('.code-lang'), keywords: texts('pre .tok-keyword'),
            ol: texts('ol > li'), ul: texts('ul > li'),
            link: [link.getAttribute('href'), link.getAttribute('rel'), link.getAttribute('target'), link.textContent],
          };
        }""")
        self.assertEqual(shape, {
            "blocks": ["H1", "P", "DIV.code-block", "OL", "UL", "P"],
            "h1": ["Practices of discipleship"],
            "strong": ["a whole way of life"],
            "em": ["grace"],
            "code": ["plan.md"],
            "pre": ["def reading_for(day, plan):\n    return plan[day % len(plan)]"],
            "preClass": "language-python",
            "lang": ["Python"], "keywords": ["def", "return"],
            "ol": ["Prayer", "Scripture", "Community"],
            "ul": ["Worship on Sunday", "Service during the week", "Rest and Sabbath"],
            "link": ["https://bibleproject.com/", "noopener noreferrer", "_blank", "the Bible Project"],
        })
        self.assertNoErrors()

    def test_gfm_tables_quotes_rules_strikethrough_tasks_images_footnotes(self):
        page = self.open_page()
        self.script(GFM_ANSWER, per_write=3)
        self.assertEqual(self.ask(page, "Show me everything"), "Done")
        shape = page.evaluate("""() => {
          const out = document.getElementById('output');
          const q = (sel) => out.querySelector(sel);
          const texts = (sel) => [...out.querySelectorAll(sel)].map((e) => e.textContent.trim());
          const size = (el) => parseFloat(getComputedStyle(el).fontSize);
          return {
            head: texts('thead th'), cells: texts('tbody td'),
            align: [...out.querySelectorAll('thead th')].map((e) => getComputedStyle(e).textAlign),
            bold: texts('td strong'), outer: q('blockquote > p').textContent,
            inner: q('blockquote > blockquote > p').textContent, hr: out.querySelectorAll('hr').length,
            del: texts('del'), tasks: [...out.querySelectorAll('li.task input')].map((e) => [e.checked, e.disabled]),
            taskText: texts('li.task'),
            image: [q('a.md-image').getAttribute('href'), q('a.md-image').textContent,
                    /security policy/.test(q('a.md-image').title)],
            imgs: document.querySelectorAll('img').length,
            fnref: texts('sup.fnref'), footnote: texts('.footnote'),
            headingBelowTitle: size(q('h1')) < size(document.querySelector('.brand-name')),
          };
        }""")
        self.assertEqual(shape, {
            "head": ["Book", "Chapters", "Focus"], "cells": ["Mark", "16", "action", "John", "21", "signs"],
            "align": ["left", "center", "right"], "bold": ["action"],
            "outer": "Outer quote", "inner": "Inner quote", "hr": 1, "del": ["wrong"],
            "tasks": [[True, True], [False, True]], "taskText": ["Read Mark 1", "Read Mark 2"],
            "image": ["https://example.org/galilee.png", "Image: A map of Galilee", True], "imgs": 0,
            "fnref": ["[1]"], "footnote": ["1The note itself."], "headingBelowTitle": True,
        })
        self.assertEqual(page.evaluate(FORBIDDEN_JS, [page.query_selector("#output"), ALLOWED_TAGS]), [])
        self.assertNoErrors()

    def test_hostile_answer_runs_nothing_and_shows_as_text(self):
        page = self.open_page()
        self.assertEqual(self.ask(page, "[[hostile]]"), "Done")
        page.hover("#output")
        page.click("#output p", position={"x": 5, "y": 5})
        self.assertIsNone(page.evaluate("() => window.__pwned"))
        self.assertEqual(self.dialogs, [])
        self.assertEqual(page.evaluate(FORBIDDEN_JS, [page.query_selector("#output"), ALLOWED_TAGS]), [])
        self.assertEqual(page.evaluate("() => document.querySelectorAll('#output *').length"),
                         page.evaluate("() => document.querySelectorAll('#output p').length"), "only paragraphs")
        text = page.text_content("#output")
        for shown in ("<script>window.__pwned=1</script>", '<img src=x onerror="window.__pwned=1">',
                      '<a href="javascript:alert(1)">x</a>', "and a click link"):
            self.assertIn(shown, text)
        self.assertEqual(page.locator("#output a").count(), 0, "no javascript: link survives")
        self.assertNoErrors()

    def test_stop_button_aborts_the_fetch_and_closes_the_upstream(self):
        page = self.open_page()
        before = self.fake.disconnects
        self.ask(page, "[[stall]] Tell me about the resurrection", wait=False)
        page.wait_for_function("() => document.getElementById('output').textContent.trim().length > 0")
        partial = page.text_content("#output")
        self.assertEqual(page.text_content("#sendBtn"), "Stop", "one button: Send becomes Stop")
        page.click("#sendBtn")
        self.assertEqual(self.wait_finished(page), "Stopped")
        self.assertTrue(self.fake.wait_for_disconnect(3, count=before + 1), "the upstream was not closed")
        self.assertEqual(page.text_content("#output"), partial, "the partial answer stays")
        self.assertEqual(page.text_content("#sendBtn"), "Send")
        self.assertNoErrors()

    def test_escape_stops_the_answer(self):
        page = self.open_page()
        before = self.fake.disconnects
        self.ask(page, "[[stall]] Tell me about the resurrection", wait=False)
        page.wait_for_function("() => document.getElementById('output').textContent.trim().length > 0")
        page.keyboard.press("Escape")
        self.assertEqual(self.wait_finished(page), "Stopped")
        self.assertTrue(self.fake.wait_for_disconnect(3, count=before + 1), "the upstream was not closed")
        self.assertNoErrors()

    def test_long_markdown_answer_renders_each_finished_block_once(self):
        # (How long the renderer takes is measured by bench/page.py, never asserted here.)
        section = ("## Section {n}\n\nA paragraph with **bold**, *emphasis*, `code` and a "
                   "[link](https://example.org/{n}). It goes on for a while so the block is long enough "
                   "to matter, with more words, and more words again.\n\n"
                   "| Column | Value |\n|---|---:|\n| alpha | {n} |\n| beta | {n}{n} |\n\n"
                   "- first point about {n}\n- second point, with ~~old~~ new text\n  - a nested point\n\n"
                   "```python\ndef section_{n}(x):\n    return x * {n}  # comment\n```\n\n"
                   "> A quote for section {n}.\n\n")
        text, sections = "", 0
        while len(text) < 18000:
            sections += 1
            text += section.format(n=sections)
        page = self.open_page()
        self.script(text, per_write=4, delay=0.002)
        self.ask(page, "A long answer, please", wait=False)
        # Finished blocks are rendered once: the first heading is the same element all the way through.
        page.wait_for_function("() => document.querySelectorAll('#output h2').length >= 3")
        page.evaluate("() => { window.__firstHeading = document.querySelector('#output h2'); }")
        self.assertEqual(page.wait_for_function(FINISHED_JS, timeout=60000) and page.text_content("#status"), "Done")
        report = page.evaluate("""() => ({
          same: window.__firstHeading === document.querySelector('#output h2'),
          headings: document.querySelectorAll('#output h2').length,
          tables: document.querySelectorAll('#output table').length})""")
        self.assertTrue(report["same"], "a finished block was rendered again")
        self.assertEqual(report["headings"], sections)
        self.assertEqual(report["tables"], sections)
        self.assertNoErrors()


class FailureTest(PageTestCase):

    def error_box(self, page: Any) -> dict[str, Any]:
        return page.evaluate("""() => {
          const turn = [...document.querySelectorAll('#turns .turn')].pop();
          const box = turn.querySelector('.turn-error');
          const q = turn.querySelector('.question').getBoundingClientRect();
          const b = box.getBoundingClientRect();
          const answer = turn.querySelector('.answer-block');
          const a = answer.getBoundingClientRect();
          return {hidden: box.hidden, text: box.querySelector('.error-text').textContent,
                  retry: !box.querySelector('.retry-btn').hidden, belowQuestion: b.top >= q.bottom - 1,
                  belowAnswer: answer.hidden || b.top >= a.bottom - 1};
        }""")

    def test_mid_stream_failures_show_an_inline_error_and_keep_the_partial_text(self):
        cases = [
            ("[[error]]", None),
            ("[[drop]]", "before the answer finished."),  # the page's words, or the relay's own
            ("[[content_filter]]", "The answer was stopped by the content filter."),
        ]
        page = self.open_page()
        for marker, expected in cases:
            with self.subTest(marker=marker):
                status = self.ask(page, marker + " [[echo]] alpha beta gamma delta epsilon")
                self.assertTrue(status.startswith("Error: "), status)
                self.assertEqual(page.text_content("#output"), "alpha beta gamma", "the partial answer stays")
                box = self.error_box(page)
                self.assertEqual(box["hidden"], False)
                self.assertTrue(box["retry"] and box["belowQuestion"] and box["belowAnswer"], box)
                if expected:
                    self.assertIn(expected, box["text"])
                self.assertNotIn("upstream", box["text"].lower())
                self.assertIn("is-error", page.get_attribute("#status", "class"))
        self.assertNoErrors()

    def test_status_before_the_stream_is_plain_words_and_retry_sends_again(self):
        page = self.open_page()
        prompt = "[[fail:500:1]] Why?"
        status = self.ask(page, prompt)
        box = self.error_box(page)
        self.assertFalse(box["hidden"])
        self.assertEqual(status, "Error: " + box["text"])
        self.assertNotIn("upstream", box["text"].lower())
        self.assertIsNone(re.search(r"\(\d{3}\)|\b50[0-9]\b", box["text"]), "no status codes in the words")
        self.assertTrue(box["retry"])
        self.assertTrue(page.is_hidden("#output"), "no empty answer box")
        count = len(self.fake.requests)
        page.click("#turns .turn:last-child .retry-btn")
        self.assertEqual(self.wait_finished(page), "Done")
        self.assertGreater(len(self.fake.requests), count)
        self.assertEqual(self.last_request()["messages"], [{"role": "user", "content": prompt}])
        self.assertTrue(self.error_box(page)["hidden"], "the error goes once the retry worked")
        self.assertEqual(len(self.turns(page)), 1)
        self.assertNoErrors(allow_failed_resource=True)

    def test_the_servers_own_message_is_shown(self):
        page = self.open_page()
        body = json.dumps({"error": "Your weekly spend limit is reached", "code": "forbidden"}).encode()
        self.fake.enqueue(400, {"Content-Type": "application/json"}, [body])
        self.ask(page, "Anything")
        self.assertEqual(self.error_box(page)["text"], "Your weekly spend limit is reached.")
        self.assertNoErrors(allow_failed_resource=True)

    def test_mid_stream_error_event_message_is_shown(self):
        page = self.open_page()
        status = self.ask(page, "[[error]] Tell me about the resurrection")
        self.assertRegex(status, r"^Error: \S")
        self.assertGreater(len(page.text_content("#output")), 0)

    def test_still_waiting_note_after_a_few_seconds_of_silence(self):
        context = self.new_context()

        def short_wait(route: Any) -> None:  # the page's own setting, shortened so the test waits 0.6 s, not 4
            body = route.fetch().text()
            self.assertIn('name="gloo-wait-note-ms" content="4000"', body)
            route.fulfill(body=body.replace('content="4000"', 'content="600"'), content_type="text/html")

        context.route(self.proxy.url + "/", short_wait)
        page = self.open_page(context=context)
        self.ask(page, "[[stall]] Tell me about the resurrection", wait=False)
        page.wait_for_function("() => document.getElementById('output').textContent.trim().length > 0")
        self.assertTrue(page.is_hidden("#turns .turn:last-child .waiting"))
        page.wait_for_selector("#turns .turn:last-child .waiting", state="visible", timeout=12000)
        self.assertIn("Still waiting", page.text_content("#turns .turn:last-child .waiting"))
        page.keyboard.press("Escape")
        self.assertEqual(self.wait_finished(page), "Stopped")
        self.assertTrue(page.is_hidden("#turns .turn:last-child .waiting"))
        self.assertNoErrors()


class ConversationTest(PageTestCase):
    """Conversations: the list, what is sent, instructions, export and import, storage and its bounds."""

    def test_the_second_question_sends_the_first_exchange_and_new_chat_keeps_the_old_one(self):
        page = self.open_page()
        self.assertEqual(self.ask(page, "[[echo]] What is grace?"), "Done")
        self.assertEqual(self.ask(page, "[[echo]] And mercy?"), "Done")
        self.assertEqual(self.last_request()["messages"], [
            {"role": "user", "content": "[[echo]] What is grace?"},
            {"role": "assistant", "content": "What is grace?"},
            {"role": "user", "content": "[[echo]] And mercy?"},
        ])
        self.assertEqual(self.turns(page), [["[[echo]] What is grace?", "What is grace?"],
                                            ["[[echo]] And mercy?", "And mercy?"]])
        self.assertEqual(page.text_content("#question"), "[[echo]] And mercy?")

        page.click("#newBtn")
        self.assertEqual(self.turns(page), [])
        self.assertEqual(self.ask(page, "[[echo]] Fresh start"), "Done")
        self.assertEqual(self.last_request()["messages"], [{"role": "user", "content": "[[echo]] Fresh start"}])

        page.click("#chatsBtn")
        titles = page.evaluate(CHAT_TITLES_JS)
        self.assertEqual(titles, ["[[echo]] Fresh start", "[[echo]] What is grace?"])
        page.click("#chatList .chat-item:nth-child(2) .chat-open")
        self.assertEqual([t[0] for t in self.turns(page)], ["[[echo]] What is grace?", "[[echo]] And mercy?"])
        self.assertTrue(page.is_hidden("#chatPanel"))

        page.click("#chatsBtn")
        page.locator("#chatList .chat-item", has_text="Fresh start").locator(".chat-delete").click()
        titles = page.evaluate(CHAT_TITLES_JS)
        self.assertEqual(titles, ["[[echo]] What is grace?"])
        self.assertNoErrors()

    def test_a_deleted_conversation_can_be_brought_back(self):
        context = self.new_context()
        page = self.open_page(context=context)
        self.assertEqual(self.ask(page, "[[echo]] Keep me"), "Done")
        page.click("#newBtn")
        self.assertEqual(self.ask(page, "[[echo]] Current one"), "Done")
        page.click("#chatsBtn")
        page.locator("#chatList .chat-item", has_text="Keep me").locator(".chat-delete").click()
        self.assertEqual(page.evaluate(CHAT_TITLES_JS), ["[[echo]] Current one"])
        self.assertTrue(page.is_visible("#undoBar"))
        self.assertIn("Deleted \u201c[[echo]] Keep me\u201d", page.text_content("#undoText"))
        page.click("#undoBtn")
        self.assertTrue(page.is_hidden("#undoBar"))
        self.assertEqual(sorted(page.evaluate(CHAT_TITLES_JS)), ["[[echo]] Current one", "[[echo]] Keep me"])
        # The current conversation, deleted and brought back, is on screen again.
        page.locator("#chatList .chat-item", has_text="Current one").locator(".chat-delete").click()
        self.assertEqual(self.turns(page), [["[[echo]] Keep me", "Keep me"]])
        page.click("#undoBtn")
        self.assertEqual(self.turns(page), [["[[echo]] Current one", "Current one"]])
        page.reload()  # and it was saved: a reload shows both
        page.wait_for_function(READY_JS)
        page.click("#chatsBtn")
        self.assertEqual(sorted(page.evaluate(CHAT_TITLES_JS)), ["[[echo]] Current one", "[[echo]] Keep me"])
        self.assertNoErrors()

    def test_other_conversations_wait_while_an_answer_streams(self):
        page = self.open_page()
        self.assertEqual(self.ask(page, "[[echo]] Earlier"), "Done")
        page.click("#newBtn")
        self.ask(page, "[[slow:0.2]] [[long:40]] Now", wait=False)
        page.wait_for_function("() => document.body.classList.contains('is-streaming')")
        page.click("#chatsBtn")
        other = page.locator("#chatList .chat-item", has_text="Earlier").locator(".chat-open")
        self.assertTrue(other.is_disabled(), "switching mid-answer is visibly not possible")
        self.assertTrue(page.is_visible("#chatBusy"))
        page.keyboard.press("Escape")
        page.wait_for_function(FINISHED_JS)
        page.wait_for_function("() => !document.querySelector('#chatList .chat-open:disabled')")
        self.assertTrue(page.is_hidden("#chatBusy"))
        self.assertNoErrors()

    def test_a_question_too_long_to_send_says_so_in_characters(self):
        page = self.open_page()
        before = len(self.fake.requests)
        page.evaluate("() => { document.getElementById('prompt').value = 'x'.repeat(1100000); }")
        page.click("#sendBtn")
        status = self.wait_finished(page)
        self.assertIn("about 1,044,000 characters at most", status)  # the relay's 1 MiB, in words
        self.assertNotIn("bytes", status)
        self.assertEqual(len(self.fake.requests), before, "nothing was sent")
        self.assertNoErrors()

    def test_instructions_are_the_conversations_system_message(self):
        context = self.new_context()
        page = self.open_page(context=context)
        self.assertFalse(page.evaluate("() => document.getElementById('instructions').open"))  # collapsed
        self.assertEqual(page.text_content("#instructionsPreview"), "(none)")
        page.click("#instructions summary")
        page.fill("#systemPrompt", "Answer in one sentence.")
        self.assertEqual(self.ask(page, "[[echo]] What is grace?"), "Done")
        self.assertEqual(self.last_request()["messages"][0], {"role": "system", "content": "Answer in one sentence."})
        self.assertIn("Answer in one sentence.", page.text_content("#instructionsPreview"))
        page.select_option("#api", "responses")
        self.assertEqual(self.ask(page, "And hope?"), "Done")
        body = self.last_request()
        self.assertEqual(body["instructions"], "Answer in one sentence.")  # the Responses API's own field
        self.assertNotIn("system", [item.get("role") for item in body["input"]])
        page.click("#defaultInstructions")
        self.assertIn("New conversations start with these", page.text_content("#instructionsNote"))
        page.select_option("#api", "chat")
        page.click("#newBtn")
        self.assertEqual(page.input_value("#systemPrompt"), "Answer in one sentence.")  # the default
        page.reload()  # kept with the conversation
        page.wait_for_function(READY_JS)
        self.assertEqual(page.input_value("#systemPrompt"), "Answer in one sentence.")
        self.assertNoErrors()

    def test_a_starter_prompt_asks_its_question(self):
        page = self.open_page()
        starters = page.evaluate("() => [...document.querySelectorAll('#starters .starter')].map(b => b.textContent)")
        self.assertGreaterEqual(len(starters), 2)
        page.click("#starters .starter >> nth=0")
        self.assertEqual(self.wait_finished(page), "Done")
        self.assertEqual(self.last_request()["messages"][-1]["content"], starters[0])
        self.assertTrue(page.is_hidden("#intro"))  # the empty state is gone once there is a question
        self.assertNoErrors()

    def test_export_and_import_a_conversation(self):
        page = self.open_page()
        page.click("#instructions summary")
        page.fill("#systemPrompt", "Be kind.")
        self.assertEqual(self.ask(page, "[[echo]] Export me"), "Done")
        page.click("#chatsBtn")
        with page.expect_download() as download:
            page.click("#exportJson")
        with open(download.value.path(), encoding="utf-8") as handle:
            record = json.load(handle)
        self.assertEqual(download.value.suggested_filename, "echo-Export-me.json")
        self.assertEqual((record["format"], record["version"], record["system"]),
                         ("gloo-stream/conversation", 1, "Be kind."))
        self.assertEqual([(t["q"], t["a"]) for t in record["turns"]], [("[[echo]] Export me", "Export me")])
        with page.expect_download() as download:
            page.click("#exportMd")
        with open(download.value.path(), encoding="utf-8") as handle:
            markdown = handle.read()
        self.assertTrue(markdown.startswith("# [[echo]] Export me\n"))
        self.assertIn("**You:** [[echo]] Export me", markdown)
        # The CLI's export (gloo_stream.py --export) is the same format: a page imports it.
        cli = {"format": "gloo-stream/conversation", "version": 1, "id": "0123456789ab", "title": "From the CLI",
               "created": 1796696205966, "updated": 1796696206430, "system": None,
               "turns": [{"q": "What is grace?", "a": "A gift.", "model": "m", "usage": None, "at": 1}]}
        page.set_input_files("#importInput", files=[{"name": "c.json", "mimeType": "application/json",
                                                     "buffer": json.dumps(cli).encode()}])
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Imported')")
        self.assertEqual(self.turns(page), [["What is grace?", "A gift."]])
        page.set_input_files("#importInput", files=[{"name": "x.json", "mimeType": "application/json",
                                                     "buffer": b'{"not": "a conversation"}'}])
        page.wait_for_function("() => document.getElementById('status').textContent.includes('not an exported')")
        self.assertNoErrors()

    def test_rename_and_search_conversations(self):
        page = self.open_page()
        self.assertEqual(self.ask(page, "[[echo]] About the shepherd"), "Done")
        page.click("#newBtn")
        self.assertEqual(self.ask(page, "[[echo]] About the sower"), "Done")
        page.click("#chatsBtn")
        page.locator("#chatList .chat-item", has_text="shepherd").locator(".chat-rename").click()
        field = page.locator("#chatList input")
        field.fill("Psalm 23 notes")
        field.press("Enter")
        self.assertEqual(sorted(page.evaluate(CHAT_TITLES_JS)), ["Psalm 23 notes", "[[echo]] About the sower"])
        page.fill("#chatSearch", "SHEPHERD")  # the text of the answers too, in any case
        self.assertEqual(page.evaluate(CHAT_TITLES_JS), ["Psalm 23 notes"])
        page.fill("#chatSearch", "nothing like this")
        self.assertEqual(page.evaluate(CHAT_TITLES_JS), [])
        self.assertIn("No conversation holds", page.text_content("#chatList"))
        page.fill("#chatSearch", "")
        self.assertEqual(len(page.evaluate(CHAT_TITLES_JS)), 2)
        self.assertNoErrors()

    def test_conversations_and_choices_survive_a_reload(self):
        context = self.new_context()
        page = self.open_page(context=context)
        page.select_option("#modelFamily", "anthropic")
        page.select_option("#tradition", "catholic")
        self.assertEqual(self.ask(page, "[[markdown]] first"), "Done")
        self.assertEqual(self.ask(page, "[[echo]] second"), "Done")
        before = self.turns(page)
        page.reload()
        page.wait_for_function(READY_JS)
        self.assertEqual(self.turns(page), before)
        self.assertEqual(page.locator("#output").count(), 1)
        self.assertEqual(page.locator("#turns .code-block").count(), 1, "stored answers are rendered as markdown")
        self.assertEqual(page.input_value("#modelFamily"), "anthropic")
        self.assertEqual(page.input_value("#tradition"), "catholic")
        self.assertEqual(self.ask(page, "[[echo]] third"), "Done")
        self.assertEqual(len(self.last_request()["messages"]), 5, "the restored exchanges are the context")
        self.assertEqual(self.last_request()["model_family"], "anthropic")
        # A second tab of the same browser sees the same conversation.
        other = self.open_page(context=context)
        self.assertEqual(len(self.turns(other)), 3)
        self.assertNoErrors()

    def test_storage_is_bounded(self):
        page = self.open_page()
        result = page.evaluate("""async () => {
          const { ChatStore, MAX_CHATS } = await import('/store.js');
          const memory = new Map();
          const storage = {getItem: (k) => memory.has(k) ? memory.get(k) : null,
                           setItem: (k, v) => memory.set(k, String(v)), removeItem: (k) => memory.delete(k)};
          const store = new ChatStore(storage);
          let first = null;
          for (let i = 0; i < MAX_CHATS + 15; i++) {
            const chat = store.create();
            chat.title = 'chat ' + i;
            chat.turns.push({q: 'q' + i, a: 'a'.repeat(50000)});
            store.save(chat);
            if (i === 0) first = chat.id;
          }
          const again = new ChatStore(storage);
          return {count: again.list().length, max: MAX_CHATS, size: memory.get('glooStream.chats.v1').length,
                  hasFirst: again.get(first) !== null, newest: again.list()[0].title};
        }""")
        self.assertLessEqual(result["count"], result["max"])
        self.assertLessEqual(result["size"], 1600000)
        self.assertFalse(result["hasFirst"], "the oldest conversation was pruned")
        self.assertEqual(result["newest"], f"chat {result['max'] + 14}")


class ExchangeTest(PageTestCase):
    """One exchange at a time: versions, regenerate and edit, copy, sources, the keys and the box."""

    def test_regenerate_and_edit_keep_every_version_as_a_branch(self):
        context = self.new_context()
        page = self.open_page(context=context)
        self.script("First answer.")
        self.assertEqual(self.ask(page, "Why pray?"), "Done")
        self.script("A follow-up answer.")
        self.assertEqual(self.ask(page, "And how?"), "Done")
        self.assertTrue(page.is_hidden("#turns .turn:nth-child(2) .versions"))  # one version: no control
        self.script("Second answer.")
        page.click("#turns .turn:nth-child(2) .regen-btn")
        self.assertEqual(self.wait_finished(page), "Done")
        versions = "#turns .turn:nth-child(2) .versions"
        self.assertEqual(page.text_content(versions + " .ver-count"), "2/2")
        self.assertEqual(self.turns(page)[1][1], "Second answer.")
        page.click(versions + " .ver-prev")
        self.assertEqual((page.text_content(versions + " .ver-count"), self.turns(page)[1][1]),
                         ("1/2", "A follow-up answer."))
        # The branch on screen is what goes upstream.
        self.script("Third.")
        self.assertEqual(self.ask(page, "Thanks"), "Done")
        self.assertEqual(self.last_request()["messages"][-2], {"role": "assistant", "content": "A follow-up answer."})
        # Editing the first question is a new version of it; what followed the old one waits in it.
        page.click("#turns .turn:nth-child(1) .edit-btn")
        page.fill("#editArea", "Why do people pray?")
        self.script("An edited answer.")
        page.click(".edit-send")
        self.assertEqual(self.wait_finished(page), "Done")
        self.assertEqual(self.turns(page), [["Why do people pray?", "An edited answer."]])
        first = "#turns .turn:nth-child(1) .versions"
        self.assertEqual(page.text_content(first + " .ver-count"), "2/2")
        page.click(first + " .ver-prev")
        self.assertEqual([t[0] for t in self.turns(page)], ["Why pray?", "And how?", "Thanks"])
        self.assertEqual(page.text_content("#turns .turn:nth-child(2) .ver-count"), "1/2")  # nested versions kept
        page.reload()  # all of it is saved
        page.wait_for_function(READY_JS)
        self.assertEqual([t[0] for t in self.turns(page)], ["Why pray?", "And how?", "Thanks"])
        page.click(first + " .ver-next")
        self.assertEqual(self.turns(page), [["Why do people pray?", "An edited answer."]])
        self.assertNoErrors()

    def test_regenerate_the_last_answer(self):
        page = self.open_page()
        self.assertEqual(self.ask(page, "[[echo]] first"), "Done")
        self.script("A first try.")
        self.script("A second try.")
        self.assertEqual(self.ask(page, "Tell me about hope"), "Done")
        self.assertEqual(self.turns(page)[-1][1], "A first try.")
        self.assertTrue(page.is_hidden("#turns .turn:first-child .regen-btn"), "only the last answer")
        page.click("#turns .turn:last-child .regen-btn")
        self.assertEqual(self.wait_finished(page), "Done")
        self.assertEqual(self.turns(page), [["[[echo]] first", "first"], ["Tell me about hope", "A second try."]])
        self.assertEqual(self.last_request()["messages"], [
            {"role": "user", "content": "[[echo]] first"}, {"role": "assistant", "content": "first"},
            {"role": "user", "content": "Tell me about hope"}])
        self.assertNoErrors()

    def test_edit_and_resend_a_question(self):
        page = self.open_page()
        self.assertEqual(self.ask(page, "[[echo]] first question"), "Done")
        self.assertEqual(self.ask(page, "[[echo]] second question"), "Done")
        page.hover("#turns .turn:first-child .question")
        page.click("#turns .turn:first-child .edit-btn")
        page.fill("#turns .turn:first-child .edit-area", "[[echo]] first, edited")
        page.click("#turns .turn:first-child .edit-send")
        self.assertEqual(self.wait_finished(page), "Done")
        self.assertEqual(self.turns(page), [["[[echo]] first, edited", "first, edited"]],
                         "the later exchange belonged to the old question")
        self.assertEqual(self.last_request()["messages"], [{"role": "user", "content": "[[echo]] first, edited"}])
        # Escape cancels an edit.
        page.click("#turns .turn:first-child .edit-btn")
        page.fill("#turns .turn:first-child .edit-area", "never sent")
        page.keyboard.press("Escape")
        self.assertEqual(page.locator(".edit-area").count(), 0)
        self.assertEqual(self.turns(page)[0][0], "[[echo]] first, edited")
        self.assertNoErrors()

    def test_copy_a_code_block_and_an_answer(self):
        context = self.new_context()
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=self.proxy.url)
        page = self.open_page(context=context)
        self.assertEqual(self.ask(page, "[[markdown]]"), "Done")
        self.assertEqual(page.text_content("#output .code-lang"), "Python")
        page.click("#output .copy-code")
        page.wait_for_function("() => document.querySelector('#output .copy-code').textContent === 'Copied'")
        self.assertEqual(page.evaluate("() => navigator.clipboard.readText()"),
                         "def reading_for(day, plan):\n    return plan[day % len(plan)]")
        page.click("#turns .turn:last-child .copy-answer")
        page.wait_for_function("() => document.querySelector('.copy-answer').textContent === 'Copied'")
        copied = page.evaluate("() => navigator.clipboard.readText()")
        self.assertTrue(copied.startswith("# Practices of discipleship\n\nDiscipleship is **a whole way of life**"),
                        copied)
        self.assertIn("```python\n", copied)
        self.assertNoErrors()

    def test_sources_and_the_model_under_the_answer(self):
        citations = [
            {"title": "Mark 1 commentary", "url": "https://example.org/mark-1", "publisher": "GlooGrounded"},
            {"name": "By name and link", "link": "http://example.org/two"},
            {"title": "Not a web link", "url": "javascript:alert(1)"},
            {"title": "Relative", "uri": "/local"},
        ]
        first = [sse(chunk(choices=[], sources_returned=True, citations=citations, model="gloo-grounded"))]
        page = self.open_page()
        self.script("Grounded answer.", first=first, model="gloo-anthropic-claude-sonnet-4.5")
        self.assertEqual(self.ask(page, "Grounded please"), "Done")
        shape = page.evaluate("""() => {
          const turn = [...document.querySelectorAll('#turns .turn')].pop();
          const links = [...turn.querySelectorAll('.sources a')];
          return {links: links.map((a) => [a.textContent, a.getAttribute('href'), a.rel]),
                  meta: turn.querySelector('.turn-meta').textContent};
        }""")
        self.assertEqual(shape["links"], [["Mark 1 commentary", "https://example.org/mark-1", "noopener noreferrer"],
                                          ["By name and link", "http://example.org/two", "noopener noreferrer"]])
        self.assertTrue(shape["meta"].startswith("answered by gloo-anthropic-claude-sonnet-4.5 \u2022 "), shape["meta"])
        self.assertNoErrors()

    def test_cite_sources_asks_for_a_grounded_answer_and_is_remembered(self):
        context = self.new_context()
        bodies: list[dict] = []

        def capture(route: Any) -> None:
            bodies.append(json.loads(route.request.post_data or "{}"))
            route.continue_()

        context.route("**/api/stream", capture)
        page = self.open_page(context=context)
        self.assertEqual(self.ask(page, "[[echo]] plain"), "Done")
        page.check("#grounded")
        self.assertEqual(self.ask(page, "[[echo]] grounded"), "Done")
        self.assertNotIn("sources_limit", bodies[0])
        self.assertEqual(bodies[1]["sources_limit"], 5)
        page.reload()
        page.wait_for_function(READY_JS)
        self.assertTrue(page.is_checked("#grounded"))
        self.assertNoErrors()

    def test_keys_enter_ctrl_enter_and_shift_enter(self):
        page = self.open_page()
        count = len(self.fake.requests)
        page.click("#prompt")
        page.keyboard.type("[[echo]] line one")
        page.keyboard.press("Shift+Enter")
        page.keyboard.type("line two")
        self.assertEqual(page.input_value("#prompt"), "[[echo]] line one\nline two")
        self.assertEqual(len(self.fake.requests), count, "Shift+Enter must not send")
        page.keyboard.press("Enter")
        self.assertEqual(self.wait_finished(page), "Done")
        self.assertEqual(self.last_request()["messages"][-1]["content"], "[[echo]] line one\nline two")
        self.assertEqual(page.input_value("#prompt"), "")
        page.keyboard.type("[[echo]] by control")
        page.keyboard.press("Control+Enter")
        self.assertEqual(self.wait_finished(page), "Done")
        self.assertEqual(self.last_request()["messages"][-1]["content"], "[[echo]] by control")
        self.assertNoErrors()

    def test_on_a_touch_keyboard_enter_adds_a_line_and_the_button_sends(self):
        page = self.open_page(width=390, height=844, touch=True)
        count = len(self.fake.requests)
        page.tap("#prompt")
        page.keyboard.type("[[echo]] one")
        page.keyboard.press("Enter")
        page.keyboard.type("two")
        self.assertEqual(page.input_value("#prompt"), "[[echo]] one\ntwo")
        self.assertEqual(len(self.fake.requests), count)
        self.assertEqual(page.get_attribute("#prompt", "enterkeyhint"), "enter")
        page.tap("#sendBtn")
        self.assertEqual(self.wait_finished(page), "Done")
        self.assertEqual(self.last_request()["messages"][-1]["content"], "[[echo]] one\ntwo")
        self.assertNoErrors()

    def test_the_button_keeps_its_size_when_the_question_box_grows(self):
        page = self.open_page()
        box = lambda sel: page.evaluate(  # noqa: E731
            "(sel) => { const r = document.querySelector(sel).getBoundingClientRect(); "
            "return [r.width, r.height]; }", sel)
        before, prompt_before = box("#sendBtn"), box("#prompt")
        page.fill("#prompt", "\n".join(f"line {n}" for n in range(12)))
        page.dispatch_event("#prompt", "input")
        self.assertGreater(box("#prompt")[1], prompt_before[1] + 20, "the box grows with its text")
        self.assertEqual(box("#sendBtn"), before)
        self.assertNoErrors()

    def test_jump_to_latest_when_scrolled_up(self):
        page = self.open_page(height=600)
        self.assertEqual(self.ask(page, "[[long:400]]"), "Done")
        self.assertTrue(page.is_hidden("#jumpBtn"))
        page.evaluate("() => window.scrollTo(0, 0)")
        page.wait_for_selector("#jumpBtn", state="visible")
        page.click("#jumpBtn")
        page.wait_for_selector("#jumpBtn", state="hidden")
        self.assertTrue(page.evaluate(
            "() => window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 2"))
        self.assertNoErrors()

    def test_model_family_and_tradition_are_sent_only_when_chosen(self):
        page = self.open_page()
        self.ask(page, "[[echo]] defaults")
        self.assertNotIn("model_family", self.last_request())
        self.assertNotIn("tradition", self.last_request())
        cases = [("anthropic", "catholic"), ("open source", "not_faith_specific"), ("google", "")]
        for family, tradition in cases:
            with self.subTest(family=family, tradition=tradition):
                page.select_option("#modelFamily", family)
                page.select_option("#tradition", tradition)
                self.assertEqual(self.ask(page, "[[echo]] chosen"), "Done")
                body = self.last_request()
                self.assertEqual(body.get("model_family"), family)
                self.assertEqual(body.get("tradition"), tradition or None)
        self.assertNoErrors()


class TwoTabsTest(PageTestCase):
    """#19.3: two tabs never lose each other's conversations."""

    def test_two_tabs_keep_both_conversations(self):
        context = self.new_context()
        first = self.open_page(context=context)
        second = self.open_page(context=context)  # the same browser profile: one localStorage
        self.assertEqual(self.ask(first, "[[echo]] from the first tab"), "Done")
        self.assertEqual(self.ask(second, "[[echo]] from the second tab"), "Done")
        # Tabs see each other's writes a moment late: the second tab may have written without the
        # first tab's conversation; the first takes the second's in on the storage event and writes
        # its own back, so a new tab finds both (at once, or on the storage event that brings them).
        first.wait_for_function("() => document.querySelectorAll('#chatList li').length === 2")  # a storage event
        fresh = self.open_page(context=context)
        fresh.wait_for_function("() => document.querySelectorAll('#chatList li').length === 2")
        titles = fresh.evaluate("() => [...document.querySelectorAll('#chatList .chat-open')].map(b => b.textContent)")
        self.assertEqual(len(titles), 2, titles)
        self.assertTrue(any("first tab" in t for t in titles) and any("second tab" in t for t in titles), titles)
        self.assertNoErrors()


class StoredRecordTest(PageTestCase):
    """#19.4: a stored record can never stop the page from starting."""

    def test_bad_records_are_skipped_and_a_constructor_code_block_renders(self):
        answer = "```constructor\nx = 1\n```\n\n```__proto__\ny\n```"
        stored = {"current": "good", "chats": [None, {"id": "good", "title": "Kept", "created": 1, "updated": 2,
                                                      "turns": [None, {"q": "Show code", "a": answer}]}]}
        context = self.new_context()
        context.add_init_script(f"localStorage.setItem('glooStream.chats.v1', {json.dumps(json.dumps(stored))})")
        page = self.open_page(context=context)
        self.assertIn("2 saved items could not be read and were skipped", page.text_content("#status"))
        codes = page.evaluate("() => [...document.querySelectorAll('#turns pre code')].map(c => c.textContent)")
        self.assertEqual(codes, ["x = 1", "y"])
        self.script("```constructor\nz = 2\n```")  # and streaming one works, not "Streaming..." forever
        self.assertEqual(self.ask(page, "More"), "Done")
        self.assertNoErrors()


class BidiTest(PageTestCase):
    """#19.12: direction controls in code ("Trojan Source") are shown, and Copy warns."""

    def test_direction_controls_in_code_are_marked_and_copied_with_a_warning(self):
        code = "access = 'user\u202e \u2066// admin?\u2069 \u2066'"
        self.script("```python\n" + code + "\n```")
        context = self.new_context()
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        page = self.open_page(context=context)
        self.assertEqual(self.ask(page, "Code please"), "Done")
        marks = page.evaluate("() => [...document.querySelectorAll('#turns pre code .bidi-mark')]"
                              ".map(m => m.textContent)")
        self.assertEqual(marks, ["<U+202E>", "<U+2066>", "<U+2069>", "<U+2066>"])
        shown = page.text_content("#turns pre code")
        self.assertNotRegex(shown, "[\u202a-\u202e\u2066-\u2069]")  # nothing hidden is left on screen
        page.click("#turns .copy-code")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('hidden direction')")
        self.assertIn("4 hidden direction controls", page.text_content("#status"))
        self.assertEqual(page.evaluate("() => navigator.clipboard.readText()"), code)  # copied as it came
        self.assertNoErrors()


class ResponsesPageTest(PageTestCase):
    """The page on the Responses API: a model picker, reasoning, images in and out."""

    def test_the_responses_api_with_reasoning_and_a_generated_image(self):
        page = self.open_page()
        self.assertFalse(page.is_visible("#responseModel"))  # Completions first: routing and tradition
        page.select_option("#api", "responses")
        self.assertTrue(page.is_visible("#responseModel"))
        self.assertFalse(page.is_visible("#tradition"))
        page.select_option("#responseModel", "gloo-openai-gpt-5")
        page.check("#drawing")
        self.assertEqual(self.ask(page, "Draw a cross"), "Done")
        body = self.last_request()
        self.assertEqual((body["model"], body["tools"], body["input"][-1]["content"]),
                         ("gloo-openai-gpt-5", [{"type": "image_generation"}], "Draw a cross"))
        self.assertEqual(self.fake.requests[-1]["path"], "/ai/v1/responses")
        shape = page.evaluate("""() => {
          const turn = [...document.querySelectorAll('#turns .turn')].pop();
          const reasoning = turn.querySelector('.reasoning');
          const img = turn.querySelector('.answer-image');
          return {answer: turn.querySelector('.answer').textContent, reasoningShown: !reasoning.hidden,
                  open: reasoning.open, reasoning: reasoning.querySelector('.reasoning-text').textContent,
                  src: img && img.getAttribute('src').slice(0, 30), width: img && img.naturalWidth,
                  meta: turn.querySelector('.turn-meta').textContent};
        }""")
        self.assertEqual(shape["answer"], "Here is the image you asked for.")
        self.assertTrue(shape["reasoningShown"])
        self.assertFalse(shape["open"])  # collapsed once the answer came
        self.assertTrue(shape["reasoning"].startswith("The question asks"))
        self.assertEqual((shape["src"], shape["width"]), ("data:image/png;base64,iVBORw0K", 64))  # it decoded
        self.assertTrue(shape["meta"].startswith("answered by gloo-openai-gpt-5 \u2022 "), shape["meta"])
        page.reload()
        page.wait_for_function(READY_JS)
        self.assertEqual((page.input_value("#api"), page.input_value("#responseModel")),
                         ("responses", "gloo-openai-gpt-5"))  # remembered
        self.assertTrue(page.is_checked("#drawing"))
        self.assertNoErrors()

    def test_the_model_picker_is_the_catalog_and_answers_show_their_cost(self):
        page = self.open_page()
        page.wait_for_function("() => document.documentElement.hasAttribute('data-models')")
        options = page.evaluate("() => [...document.querySelectorAll('#responseModel option')]"
                                ".map((o) => [o.value, o.textContent])")
        self.assertEqual([value for value, _ in options],
                         [m["id"] for m in fake_gloo._CATALOG if "responses" in m["capabilities"]])
        self.assertIn(["gloo-openai-gpt-5-nano", "GPT-5 nano \u00b7 $0.05/$0.4"], options)
        page.select_option("#api", "responses")
        page.select_option("#responseModel", "gloo-openai-gpt-5-nano")
        self.assertEqual(self.ask(page, "Hello"), "Done")
        self.assertEqual(self.last_request()["model"], "gloo-openai-gpt-5-nano")
        meta = page.text_content("#meta")
        cost = re.search(r" \u2022 \$(0\.[0-9]+)$", meta)
        self.assertIsNotNone(cost, meta)
        self.assertGreater(float(cost.group(1)), 0)
        self.assertNoErrors()

    def test_an_attached_image_goes_with_the_question(self):
        page = self.open_page()
        page.select_option("#api", "responses")
        page.uncheck("#drawing")
        png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwAD/wH+n3uH"
                               "mQAAAABJRU5ErkJggg==")  # one pixel
        page.set_input_files("#imageInput", files=[{"name": "dot.png", "mimeType": "image/png", "buffer": png}])
        page.wait_for_function("() => !document.getElementById('attached').hidden")
        self.assertEqual(self.ask(page, "What is this?"), "Done")
        parts = self.last_request()["input"][-1]["content"]
        self.assertEqual(parts[0], {"type": "input_text", "text": "What is this?"})
        self.assertEqual(parts[1]["type"], "input_image")
        self.assertTrue(parts[1]["image_url"].startswith("data:image/png;base64,iVBORw0KGgo"))
        answer = self.turns(page)[-1][1]
        self.assertIn(f"I see an image (image/png, {len(png)} bytes).", answer)
        self.assertTrue(page.evaluate("() => !!document.querySelector('#turns .turn .question-image')"))
        self.assertTrue(page.evaluate("() => document.getElementById('attached').hidden"))  # used once
        page.set_input_files("#imageInput", files=[{"name": "fake.png", "mimeType": "image/png",
                                                    "buffer": b"not a png at all"}])
        page.wait_for_function("() => document.getElementById('status').textContent.includes('not the image')")
        # More than fits, in base64, in the relay's 1 MiB body limit (its /health says so): refused at once.
        page.set_input_files("#imageInput", files=[{"name": "big.png", "mimeType": "image/png",
                                                    "buffer": png + b"\0" * (800 * 1024)}])
        page.wait_for_function("() => document.getElementById('status').textContent.includes('larger than 720 KB')")
        self.assertTrue(page.evaluate("() => document.getElementById('attached').hidden"))
        self.assertNoErrors()


class ApiKeyTest(PageTestCase):
    KEY = "page-test-key-7d1f"

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.keyed_fake, cls.keyed_proxy = _serve(api_key=cls.KEY)

    def test_no_key_field_when_the_proxy_needs_none(self):
        page = self.open_page()
        page.wait_for_selector("html[data-health=ok]", state="attached")
        self.assertTrue(page.is_hidden("#apiKey"))

    def test_key_field_and_401_message(self):
        page = self.open_page(self.keyed_proxy)
        page.wait_for_selector("#apiKey", state="visible")
        self.assertEqual(page.evaluate("() => document.querySelector('label[for=apiKey]').textContent"), "API key")

        status = self.ask(page, "[[echo]] hello")
        self.assertEqual(status, "Error: This proxy needs an API key. Enter it in the API key field and send again.")
        page.fill("#apiKey", "wrong-key")
        page.click("#turns .turn:last-child .retry-btn")
        self.assertEqual(self.wait_finished(page), "Error: The API key was not accepted. Check the key and send again.")

        self.assertFalse(page.evaluate("() => document.documentElement.hasAttribute('data-models')"))  # needs the key
        page.fill("#apiKey", self.KEY)
        page.click("#turns .turn:last-child .retry-btn")
        self.assertEqual(self.wait_finished(page), "Done")
        self.assertEqual(self.keyed_fake.requests[-1]["body"]["messages"][-1]["content"], "[[echo]] hello")
        # With the key, the model picker is filled from the relay's catalog.
        page.wait_for_function("() => document.documentElement.hasAttribute('data-models')")
        self.assertEqual(page.evaluate("() => sessionStorage.getItem('glooStream.apiKey')"), self.KEY)
        page.reload()
        page.wait_for_selector("#apiKey", state="visible")
        self.assertEqual(page.input_value("#apiKey"), self.KEY, "kept in sessionStorage for the tab")
        self.assertNoErrors(allow_failed_resource=True)


class SimulatorBadgeTest(PageTestCase):

    def open_with_health(self, health: dict[str, Any]) -> Any:
        context = self.new_context()
        context.route("**/health", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(health)))
        page = self.open_page(context=context)
        page.wait_for_selector("html[data-health=ok]", state="attached")
        return page

    def test_badge_when_health_says_simulator(self):
        page = self.open_with_health({"status": "ok", "simulator": True, "auth_required": False})
        self.assertTrue(page.is_visible("#simBadge"))
        self.assertEqual(page.text_content("#simBadge"), "Simulator")

    def test_no_badge_otherwise(self):
        for health in ({"status": "ok", "simulator": False}, {"status": "ok"}):
            with self.subTest(health=health):
                page = self.open_with_health(health)
                self.assertTrue(page.is_hidden("#simBadge"))


class RendererTest(PageTestCase):
    """render.js in the page: tokens to elements, and only safe ones, on data tables and random input."""

    def test_markdown_vectors_as_elements(self):
        link = 'rel="noopener noreferrer" target="_blank"'
        cases = [
            ("# Title", "<h1>Title</h1>"),
            ("a **b** *c* `d` ~~e~~", "<p>a <strong>b</strong> <em>c</em> <code>d</code> <del>e</del></p>"),
            ("```\n<b>x</b>\n```", '<div class="code-block"><div class="code-head"><span class="code-lang">text</span>'
                                   '<button class="copy-code" type="button" aria-label="Copy the text code">'
                                   'Copy</button>'
                                   '</div><pre><code>&lt;b&gt;x&lt;/b&gt;</code></pre></div>'),
            ("1. a\n2. b", "<ol><li>a</li><li>b</li></ol>"),
            ("3. c", '<ol start="3"><li>c</li></ol>'),
            ("- a\n\n- b", "<ul><li><p>a</p></li><li><p>b</p></li></ul>"),
            ("- [x] done", '<ul class="task-list"><li class="task">'
                           '<input type="checkbox" disabled="" aria-label="done">'
                           'done</li></ul>'),
            ("> q", "<blockquote><p>q</p></blockquote>"),
            ("---", "<hr>"),
            ("| a |\n|--:|\n| 1 |", '<div class="table-wrap"><table><thead><tr><th class="align-right">a</th></tr>'
                                   '</thead><tbody><tr><td class="align-right">1</td></tr></tbody></table></div>'),
            ("x[^n]\n\n[^n]: y", '<p>x<sup class="fnref">[n]</sup></p><div class="footnotes"><div class="footnote">'
                                  '<sup class="footnote-label">n</sup>y</div></div>'),
            # Defined first, shown last: footnotes are read at the end of the answer.
            ("[^n]: y\n\nx[^n] more", '<p>x<sup class="fnref">[n]</sup> more</p><div class="footnotes">'
                                      '<div class="footnote"><sup class="footnote-label">n</sup>y</div></div>'),
            ("[x](https://e.com/a_b)", f'<p><a href="https://e.com/a_b" {link}>x</a></p>'),
            ("![cat](https://e.com/c.png)", f'<p><a href="https://e.com/c.png" {link} class="md-image" title="Images '
                                            "are not loaded here: the page's security policy blocks remote images. "
                                            'Open the link to see it.">Image: cat</a><span class="md-image-note"> '
                                            '(not shown: this page loads no remote images)</span></p>'),
            ("[x](javascript:alert(1))", "<p>x</p>"),
            ("[see https://a.b/ ![i](https://c.d/i.png)](https://e.com)",
             f'<p><a href="https://e.com/" {link}>see https://a.b/ <span class="md-image">[Image: i]</span></a></p>'),
            ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"),
            ("line1\nline2", "<p>line1<br>line2</p>"),
        ]
        page = self.open_page()
        rendered = page.evaluate("""async (sources) => {
          const { renderMarkdown } = await import('/render.js');
          return sources.map((text) => {
            const box = document.createElement('div');
            box.appendChild(renderMarkdown(text));
            return box.innerHTML;
          });
        }""", [source for source, _ in cases])
        for (source, expected), got in zip(cases, rendered):
            with self.subTest(source=source):
                self.assertEqual(got, expected)
        self.assertNoErrors()

    def test_math_is_drawn_as_mathml_and_the_rest_shown_as_code(self):
        page = self.open_page()
        self.script("Euler: $e^{i\\pi}+1=0$. A price of $5 and $10 stays text.\n\n$$\n"
                    "\\frac{-b \\pm \\sqrt{b^2-4ac}}{2a}\n$$\n\nNot drawn: $\\href{x}{y}$.")
        self.assertEqual(self.ask(page, "Show me some math"), "Done")
        shape = page.evaluate("""() => {
          const out = document.getElementById('output');
          const maths = [...out.querySelectorAll('math')];
          return {count: maths.length, display: maths.map((m) => m.getAttribute('display')),
                  widths: maths.map((m) => m.getBoundingClientRect().width),
                  inline: maths[0] && maths[0].querySelector('msup') !== null,
                  fraction: maths[1] && maths[1].querySelector('mfrac msqrt') !== null,
                  code: [...out.querySelectorAll('code.math-source')].map((c) => c.textContent),
                  text: out.querySelector('p').textContent};
        }""")
        self.assertEqual(shape["count"], 2)
        self.assertEqual(shape["display"], [None, "block"])
        self.assertTrue(shape["inline"] and shape["fraction"], shape)
        self.assertTrue(all(width > 10 for width in shape["widths"]), "the browser draws MathML")
        self.assertEqual(shape["code"], ["$\\href{x}{y}$"])  # outside the subset: as written, never markup
        self.assertIn("A price of $5 and $10 stays text.", shape["text"])
        self.assertNoErrors()

    def test_a_long_list_or_table_keeps_its_finished_items_on_screen(self):
        """#19.13: the finished items and rows of a long open list or table are rendered once, not on
        every update (counted in elements created, not timed)."""
        page = self.open_page()
        report = page.evaluate("""async () => {
          const { renderMarkdown, AnswerView } = await import('/render.js');
          const sandbox = document.createElement('div');
          document.body.appendChild(sandbox);
          const n = 300;
          const docs = {
            list: Array.from({length: n}, (_, i) => (i + 1) + '. item **' + i + '**').join('\\n') + '\\n\\nafter',
            tasks: Array.from({length: n}, (_, i) => '- [' + (i % 2 ? 'x' : ' ') + '] task ' + i).join('\\n'),
            table: '| n | x |\\n|---|:-:|\\n' + Array.from({length: n}, (_, i) => '| ' + i + ' | x' + i + ' |')
                     .join('\\n') + '\\n\\nend',
            loose: Array.from({length: 40}, (_, i) => '- item ' + i).join('\\n') + '\\n\\n- now loose\\n- last',
          };
          const out = {};
          for (const [name, doc] of Object.entries(docs)) {
            let created = 0;
            const observer = new MutationObserver((records) => {
              for (const r of records) {
                for (const node of r.addedNodes) if (node.nodeName === 'LI' || node.nodeName === 'TR') created++;
              }
            });
            observer.observe(sandbox, {childList: true, subtree: true});
            const view = new AnswerView(sandbox);
            let first = null, kept = true;
            for (let end = 1; end <= doc.length; end += 9) {
              view.update(doc.slice(0, end));
              const node = sandbox.querySelector(name === 'table' ? 'tbody tr' : 'li');
              if (node && !first && end > doc.length / 4) first = node;  // by now some items are finished
              if (first && node !== first) kept = false;
            }
            view.finish(doc);
            observer.takeRecords();
            observer.disconnect();
            const streamed = sandbox.innerHTML;
            sandbox.replaceChildren(renderMarkdown(doc));
            out[name] = {kept, created, same: streamed === sandbox.innerHTML,
                         items: sandbox.querySelectorAll('li, tbody tr').length};
          }
          sandbox.remove();
          return out;
        }""")
        for name in ("list", "tasks", "table"):
            with self.subTest(name):
                got = report[name]
                self.assertTrue(got["same"], "streaming ends with the same elements as rendering it whole")
                self.assertTrue(got["kept"], "the first item stays the same element while the rest streams")
                self.assertEqual(got["items"], 300)
                self.assertLess(got["created"], 3 * got["items"], "items are made about once each, not per update")
        self.assertTrue(report["loose"]["same"], "a list that turns loose later is shown loose throughout")
        self.assertNoErrors()

    def test_renderer_only_builds_allowed_elements_on_hostile_and_random_input(self):
        page = self.open_page()
        report = page.evaluate("""async ([allowed]) => {
          const { renderMarkdown, AnswerView } = await import('/render.js');
          const forbidden = """ + FORBIDDEN_JS + """;
          const pieces = ['<script>window.__pwned=1</script>', '<img src=x onerror="window.__pwned=1">',
            '<a href="javascript:window.__pwned=1">', '<svg onload=window.__pwned=1>', '<iframe src=x>',
            '[', ']', '(', ')', '](', '](javascript:window.__pwned=1)', '](https://ok.example/p)', '![', '[^1]',
            '[^1]: ',
            '](http://x.y/"onmouseover="window.__pwned=1)', '](data:text/html,x)', '<', '>', '<https://a.b/>',
            '<javascript:x>', '*', '**', '***', '_', '__', '~~', '`', '``', '```', '```js\\n', '~~~', '\\n', '\\n\\n',
            '\\r', '\\r\\n', '# ', '## ', '- ', '* ', '+ ', '1. ', '2) ', '> ', '| a |', '|---|', '- [ ] ', '---',
            '   ', '\\t', 'https://e.com/a', 'http://', 'javascript:', ' on', 'click=', '"', "'", '&', '&lt;', '\\\\',
            'word', 'x', ' ', '\\u0000', '\\u202e', '\\ufeff', '\\u2028', '😀', 'é',
            '$', '$$', '\\\\frac{', '\\\\sqrt', '^', '_{', '\\\\alpha', '\\\\href{', '\\\\begin{pmatrix}', '&',
            '\\\\\\\\', '\\\\end{pmatrix}', '\\\\text{'];
          let seed = 20240611;
          const random = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
          const bad = [];
          const sandbox = document.createElement('div');
          sandbox.className = 'visually-hidden';
          document.body.appendChild(sandbox);
          const check = (text) => {
            let fragment;
            try { fragment = renderMarkdown(text); }
            catch (e) { bad.push('threw on ' + JSON.stringify(text) + ': ' + e); return; }
            sandbox.replaceChildren(fragment);
            for (const b of forbidden([sandbox, allowed])) bad.push(b + ' from ' + JSON.stringify(text));
          };
          let rendered = 0;
          for (const piece of pieces) { check(piece); rendered++; }
          for (let n = 0; n < 2000; n++) {
            let text = '';
            const length = 1 + Math.floor(random() * 24);
            for (let k = 0; k < length; k++) text += pieces[Math.floor(random() * pieces.length)];
            check(text);
            rendered++;
          }
          // Every prefix of a long answer through the streaming view, as the page shows it.
          const doc = pieces.join(' ') + '\\n# Head\\n- a **b\\n1. `c\\n```py\\nx\\n```\\n' +
            '| a | b |\\n|---|---|\\n| 1 | 2 |\\n[l](https://x.y/) end';
          const view = new AnswerView(sandbox);
          for (let i = 0; i <= doc.length; i++) { view.update(doc.slice(0, i)); rendered++; }
          view.finish(doc);
          const streamed = sandbox.innerHTML;
          sandbox.replaceChildren(renderMarkdown(doc));
          const whole = sandbox.innerHTML;
          sandbox.remove();
          return {bad: bad.slice(0, 20), rendered, same: streamed === whole,
                  pwned: window.__pwned === undefined ? null : String(window.__pwned)};
        }""", [ALLOWED_TAGS])
        self.assertEqual(report["bad"], [])
        self.assertGreater(report["rendered"], 2000)
        self.assertTrue(report["same"], "streaming ends with the same elements as rendering the whole answer")
        self.assertIsNone(report["pwned"])
        time.sleep(0.1)  # let any stray handler (onerror, onload) fire before looking
        self.assertIsNone(page.evaluate("() => window.__pwned"))
        self.assertNoErrors()

    def test_sse_parser_in_the_browser(self):
        page = self.open_page()
        result = page.evaluate("""async () => {
          const { createParser } = await import('/sse.js');
          const bytes = new TextEncoder().encode(
            ': hi\\r\\ndata: caf\\u00e9 \\ud83d\\ude00\\r\\n\\r\\ndata: [DONE]\\n\\n');
          const decoder = new TextDecoder('utf-8');
          const parser = createParser();
          const out = [];
          for (const b of bytes) out.push(...parser.feed(decoder.decode(new Uint8Array([b]), {stream: true})));
          out.push(...parser.end());
          return out.map((e) => e.data);
        }""")
        self.assertEqual(result, ["caf\u00e9 \U0001F600", "[DONE]"])


class PageShapeTest(PageTestCase):

    def test_controls_labels_and_initial_state(self):
        page = self.open_page()
        shape = page.evaluate("""() => {
          const $ = (id) => document.getElementById(id);
          const label = (id) => {
            const l = document.querySelector('label[for=' + id + ']');
            return l && l.textContent.trim();
          };
          return {
            send: [$('sendBtn').textContent, $('sendBtn').disabled, $('sendBtn').type], stop: $('stopBtn'),
            prompt: [$('prompt').tagName, label('prompt')], status: $('status').textContent,
            meta: $('meta').textContent, turns: $('turns').children.length, intro: !$('intro').hidden,
            labels: [label('modelFamily'), label('tradition'), label('grounded'), label('apiKey')],
            grounded: [$('grounded').type, $('grounded').checked],
            families: [...$('modelFamily').options].map((o) => o.value),
            traditions: [...$('tradition').options].map((o) => o.value),
            inlineScripts: [...document.scripts].filter((s) => !s.src).length,
            scripts: [...document.scripts].map((s) => [new URL(s.src).pathname, s.type]),
            styleAttributes: document.querySelectorAll('[style]').length,
            buttons: [$('newBtn').textContent, $('chatsBtn').textContent, $('chatsBtn').getAttribute('aria-expanded')],
            badge: $('simBadge').hidden, jump: $('jumpBtn').hidden, panel: $('chatPanel').hidden,
          };
        }""")
        self.assertEqual(shape, {
            "send": ["Send", False, "submit"], "stop": None,
            "prompt": ["TEXTAREA", "Your question"], "status": "Ready", "meta": "", "turns": 0, "intro": True,
            "labels": ["Model", "Tradition", "Cite sources", "API key"], "grounded": ["checkbox", False],
            "families": ["", "openai", "anthropic", "google", "open source"],
            "traditions": ["", "evangelical", "catholic", "mainline", "not_faith_specific"],
            "inlineScripts": 0, "scripts": [["/app.js", "module"]],
            "styleAttributes": 0, "buttons": ["New chat", "Chats", "false"],
            "badge": True, "jump": True, "panel": True,
        })
        self.assertNoErrors()

    def test_served_with_a_strict_content_security_policy(self):
        page = self.open_page()
        response = page.request.get(self.proxy.url + "/")
        self.assertIn("default-src 'self'", response.headers["content-security-policy"])
        self.assertEqual(response.headers["x-content-type-options"], "nosniff")
        for name in ("app.js", "markdown.js", "render.js", "sse.js", "highlight.js", "store.js"):
            with self.subTest(module=name):
                module = page.request.get(self.proxy.url + "/" + name)
                self.assertEqual(module.status, 200)
                self.assertTrue(module.headers["content-type"].startswith("text/javascript"))
        self.assertEqual(self.ask(page, "[[markdown]]"), "Done")  # everything ran under that policy
        self.assertEqual(page.evaluate("() => document.querySelectorAll('[style]').length"), 0)
        self.assertNoErrors()

    def test_phone_width_and_both_colour_schemes(self):
        colours = {}
        for scheme in ("light", "dark"):
            with self.subTest(scheme=scheme):
                page = self.open_page(width=390, height=844, color_scheme=scheme)
                self.assertEqual(self.ask(page, "[[markdown]]"), "Done")
                layout = page.evaluate("""() => {
                  const box = (id) => { const r = document.getElementById(id).getBoundingClientRect();
                                        return [r.left, r.right, r.top, r.bottom]; };
                  const style = (sel, prop) => getComputedStyle(document.querySelector(sel))[prop];
                  return {scrollWidth: document.documentElement.scrollWidth,
                          prompt: box('prompt'), send: box('sendBtn'), status: box('status'),
                          chats: box('chatsBtn'), newChat: box('newBtn'),
                          bg: style('body', 'backgroundColor'), text: style('body', 'color'),
                          muted: style('#meta', 'color'), surface: style('.composer-area', 'backgroundColor')};
                }""")
                self.assertLessEqual(layout["scrollWidth"], 390, "no sideways scrolling on a phone")
                for name in ("prompt", "send", "status", "chats", "newChat"):
                    left, right, top, bottom = layout[name]
                    self.assertTrue(0 <= left < right <= 390 and 0 <= top < bottom <= 844, f"{name} {layout[name]}")
                self.assertGreaterEqual(layout["prompt"][1] - layout["prompt"][0], 200, "a usable question box")
                self.assertGreaterEqual(_contrast(layout["text"], layout["bg"]), 7)
                self.assertGreaterEqual(_contrast(layout["muted"], layout["surface"]), 4.5)
                colours[scheme] = _luminance(layout["bg"])
        self.assertGreater(colours["light"], 0.8)
        self.assertLess(colours["dark"], 0.05)
        self.assertNoErrors()


    def test_the_theme_switch_beats_the_systems_scheme_and_is_remembered(self):
        context = self.new_context(color_scheme="light")
        page = self.open_page(context=context)
        background = "() => getComputedStyle(document.body).backgroundColor"
        self.assertGreater(_luminance(page.evaluate(background)), 0.8)  # System: the browser's light
        page.select_option("#theme", "dark")
        self.assertLess(_luminance(page.evaluate(background)), 0.05)
        code = "() => getComputedStyle(document.querySelector('#meta')).color"
        self.assertGreaterEqual(_contrast(page.evaluate(code), page.evaluate(background)), 4.5)
        page.reload()
        page.wait_for_function(READY_JS)
        self.assertEqual(page.input_value("#theme"), "dark")
        self.assertLess(_luminance(page.evaluate(background)), 0.05)
        page.select_option("#theme", "")
        self.assertGreater(_luminance(page.evaluate(background)), 0.8)
        dark = self.open_page(color_scheme="dark")  # and Light wins over a dark system
        dark.select_option("#theme", "light")
        self.assertGreater(_luminance(dark.evaluate(background)), 0.8)
        self.assertNoErrors()


def _rgb(css: str) -> list[float]:
    return [float(v) for v in re.findall(r"[\d.]+", css)[:3]]


def _luminance(css: str) -> float:
    def channel(value: float) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(v) for v in _rgb(css))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


if __name__ == "__main__":
    unittest.main()
