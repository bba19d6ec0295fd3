"""The chat page (web/) in a real browser: Chromium driven by Playwright, served by the proxy
relaying the simulator. One browser and one proxy for the module; a fresh browser context per test.

Skipped when Chromium or Playwright is missing, unless CI=true (then it fails): see page_support.
"""

from __future__ import annotations

import os
import re
import time
import unittest
from typing import Any, Dict, List

from tests.page_support import serving, start_browser
from tests.support import clean_environment

FAILURE_DIR = "/tmp/page-failures"
FINISHED_JS = """() => {
  const s = document.getElementById('status').textContent;
  return s === 'Done' || s.startsWith('Done (') || s === 'Stopped' || s.startsWith('Error: ');
}"""
# Records each text #status shows from now on in window.__statuses (one observer per page).
WATCH_STATUS_JS = """() => {
  window.__statuses = [];
  if (window.__watchingStatus) return;
  window.__watchingStatus = true;
  new MutationObserver(() => window.__statuses.push(document.getElementById('status').textContent))
    .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});
}"""
ALLOWED_TAGS = ["H1", "H2", "H3", "H4", "H5", "H6", "P", "STRONG", "EM", "CODE", "PRE", "OL", "UL", "LI", "A", "BR"]
META = re.compile(r"^(\d+) tokens? \u2022 \d+ ms \u2022 first token \d+ ms \u2022 \d+\.\d tokens/s$")

# Every element under `root` that the safe renderer must never make (used on #output and on fragments).
FORBIDDEN_JS = """(root) => {
  const bad = [];
  for (const el of root.querySelectorAll('*')) {
    const tag = el.tagName;
    if (['SCRIPT', 'IMG', 'IFRAME', 'OBJECT', 'EMBED', 'SVG', 'svg', 'STYLE', 'LINK', 'FORM', 'INPUT',
         'BUTTON', 'DIV'].includes(tag)) bad.push('element ' + tag);
    for (const attr of el.attributes) {
      if (/^on/i.test(attr.name)) bad.push(tag + ' has ' + attr.name);
      if (/^\\s*javascript:/i.test(attr.value)) bad.push(tag + ' ' + attr.name + '=' + attr.value);
    }
  }
  return bad;
}"""

_playwright: Any = None
_browser: Any = None
_stack: List[Any] = []


def setUpModule() -> None:
    global _playwright, _browser
    _playwright, _browser = start_browser()


def tearDownModule() -> None:
    for server in reversed(_stack):
        server.__exit__(None, None, None)
    _stack.clear()
    if _browser is not None:
        _browser.close()
    if _playwright is not None:
        _playwright.stop()


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
        self.page_errors: List[str] = []
        self.console_errors: List[str] = []
        self.dialogs: List[str] = []

    def open_page(self, proxy: Any = None, *, width: int = 1280, height: int = 800,
                  color_scheme: str = "light") -> Any:
        context = _browser.new_context(viewport={"width": width, "height": height}, color_scheme=color_scheme)
        self.addCleanup(context.close)
        page = context.new_page()
        page.set_default_timeout(8000)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", lambda message: message.type == "error" and self.console_errors.append(message.text))

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        self.addCleanup(self._screenshot_on_failure, page)
        page.goto((proxy or self.proxy).url + "/")
        page.wait_for_function("() => window.GlooMarkdown && window.GlooSSE && document.readyState === 'complete'")
        return page

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

    def last_request(self) -> Dict[str, Any]:
        return self.fake.requests[-1]["body"]

    def assertNoErrors(self, *, allow_failed_resource: bool = False) -> None:
        console = [text for text in self.console_errors
                   if not (allow_failed_resource and text.startswith("Failed to load resource"))]
        self.assertEqual(self.page_errors, [], "uncaught errors in the page")
        self.assertEqual(console, [], "console errors")
        self.assertEqual(self.dialogs, [], "dialogs opened")


class StreamingTest(PageTestCase):

    def test_text_appears_while_the_answer_is_still_streaming(self):
        words = "one two three four five six"
        page = self.open_page()
        self.ask(page, "[[slow:0.15]] [[echo]] " + words, wait=False)
        # One snapshot, taken in the page the moment the first words show, so nothing races it.
        snapshot = page.wait_for_function("""() => {
          const $ = (id) => document.getElementById(id);
          const text = $('output').textContent;
          if (!text.trim()) return null;
          return {text, status: $('status').textContent, send: $('sendBtn').disabled, stop: $('stopBtn').disabled,
                  cursors: $('output').querySelectorAll('.cursor').length, busy: $('output').getAttribute('aria-busy')};
        }""").json_value()
        partial = snapshot.pop("text")
        self.assertEqual(snapshot, {"status": "Streaming\u2026", "send": True, "stop": False, "cursors": 1,
                                    "busy": "true"})

        self.assertEqual(self.wait_finished(page), "Done")
        full = page.text_content("#output")
        self.assertEqual(full, words)
        self.assertTrue(words.startswith(partial.strip()) and len(partial.strip()) < len(words),
                        f"partial {partial!r} should be a strict prefix of the answer")
        self.assertEqual(page.locator("#output .cursor").count(), 0)
        meta = page.text_content("#meta")
        self.assertRegex(meta, META)
        self.assertEqual(int(META.match(meta).group(1)), 6)
        self.assertTrue(page.is_enabled("#sendBtn"))
        self.assertTrue(page.is_disabled("#stopBtn"))
        self.assertEqual(page.get_attribute("#output", "aria-busy"), "false")
        self.assertEqual(self.last_request()["messages"], [{"role": "user", "content": "[[slow:0.15]] [[echo]] " + words}])
        self.assertNoErrors()

    def test_markdown_answer_becomes_the_right_elements(self):
        page = self.open_page()
        self.assertEqual(self.ask(page, "[[markdown]]"), "Done")
        shape = page.evaluate("""() => {
          const out = document.getElementById('output');
          const texts = (sel) => [...out.querySelectorAll(sel)].map((e) => e.textContent);
          const link = out.querySelector('a');
          return {
            blocks: [...out.children].map((e) => e.tagName),
            h1: texts('h1'), strong: texts('strong'), em: texts('em'), code: texts(':not(pre) > code'),
            pre: texts('pre > code'), preClass: out.querySelector('pre > code').className,
            ol: texts('ol > li'), ul: texts('ul > li'),
            link: [link.getAttribute('href'), link.getAttribute('rel'), link.getAttribute('target'), link.textContent],
          };
        }""")
        self.assertEqual(shape, {
            "blocks": ["H1", "P", "PRE", "OL", "UL", "P"],
            "h1": ["Practices of discipleship"],
            "strong": ["a whole way of life"],
            "em": ["grace"],
            "code": ["plan.md"],
            "pre": ["def reading_for(day, plan):\n    return plan[day % len(plan)]"],
            "preClass": "language-python",
            "ol": ["Prayer", "Scripture", "Community"],
            "ul": ["Worship on Sunday", "Service during the week", "Rest and Sabbath"],
            "link": ["https://bibleproject.com/", "noopener noreferrer", "_blank", "the Bible Project"],
        })
        self.assertNoErrors()

    def test_hostile_answer_runs_nothing_and_shows_as_text(self):
        page = self.open_page()
        self.assertEqual(self.ask(page, "[[hostile]]"), "Done")
        page.hover("#output")
        page.click("#output p", position={"x": 5, "y": 5})
        self.assertIsNone(page.evaluate("() => window.__pwned"))
        self.assertEqual(self.dialogs, [])
        self.assertEqual(page.evaluate(FORBIDDEN_JS, page.query_selector("#output")), [])
        tags = page.evaluate("() => [...document.querySelectorAll('#output *')].map((e) => e.tagName)")
        self.assertLessEqual(set(tags), set(ALLOWED_TAGS))
        text = page.text_content("#output")
        for shown in ("<script>window.__pwned=1</script>", '<img src=x onerror="window.__pwned=1">',
                      '<a href="javascript:alert(1)">x</a>', "and a click link"):
            self.assertIn(shown, text)
        self.assertEqual(page.locator("#output a").count(), 0, "no javascript: link survives")
        self.assertNoErrors()

    def test_stop_aborts_the_fetch_and_closes_the_upstream(self):
        page = self.open_page()
        before = self.fake.disconnects
        self.ask(page, "[[stall]] Tell me about the resurrection", wait=False)
        page.wait_for_function("() => document.getElementById('output').textContent.trim().length > 0")
        partial = page.text_content("#output")
        page.click("#stopBtn")
        self.assertEqual(self.wait_finished(page), "Stopped")
        self.assertTrue(self.fake.wait_for_disconnect(3, count=before + 1), "the upstream was not closed")
        self.assertEqual(page.text_content("#output"), partial, "the partial answer stays")
        self.assertTrue(page.is_enabled("#sendBtn"))
        self.assertTrue(page.is_disabled("#stopBtn"))
        self.assertNoErrors()


class FailureTest(PageTestCase):

    def test_mid_stream_failures_show_an_error_and_keep_the_partial_text(self):
        cases = [
            ("[[error]]", "Error: "),
            ("[[drop]]", "Error: "),
            ("[[content_filter]]", "Error: the answer was stopped by the content filter"),
        ]
        page = self.open_page()
        for marker, expected in cases:
            with self.subTest(marker=marker):
                page.evaluate(WATCH_STATUS_JS)
                # Past the end of the stream's request nothing is left that could rewrite the status.
                with page.expect_request_finished(lambda request: request.url.endswith("/api/stream")):
                    status = self.ask(page, marker + " [[echo]] alpha beta gamma delta epsilon")
                self.assertTrue(status.startswith(expected), status)
                self.assertEqual(page.text_content("#output"), "alpha beta gamma", "the partial answer stays")
                self.assertIn("is-error", page.get_attribute("#status", "class"))
                statuses = page.evaluate("() => new Promise((done) => setTimeout(() => done(window.__statuses)))")
                self.assertEqual(statuses[-1], status, "the error stays visible")
                self.assertEqual(len([s for s in statuses if s.startswith("Error: ")]), 1, statuses)
        self.assertNoErrors()

    def test_mid_stream_error_event_message_is_shown(self):
        page = self.open_page()
        status = self.ask(page, "[[error]] Tell me about the resurrection")
        self.assertRegex(status, r"^Error: \S")
        self.assertNotEqual(status, "Error: the stream reported an error")
        self.assertGreater(len(page.text_content("#output")), 0)

    def test_status_before_the_stream_is_an_error_with_the_proxy_message(self):
        page = self.open_page()
        prompt = "[[status:500]] Why?"
        status = self.ask(page, prompt)
        self.assertRegex(status, r"^Error: .+ \(502\)$")
        self.assertIn("upstream", status)
        self.assertEqual(page.text_content("#output"), "")
        self.assertEqual(page.input_value("#prompt"), prompt, "the question comes back to retry")
        self.assertNoErrors(allow_failed_resource=True)


class ConversationTest(PageTestCase):

    def test_the_second_question_sends_the_first_exchange(self):
        page = self.open_page()
        self.assertEqual(self.ask(page, "[[echo]] What is grace?"), "Done")
        first_answer = page.text_content("#output")
        self.assertEqual(first_answer, "What is grace?")
        self.assertEqual(self.ask(page, "[[echo]] And mercy?"), "Done")
        self.assertEqual(self.last_request()["messages"], [
            {"role": "user", "content": "[[echo]] What is grace?"},
            {"role": "assistant", "content": "What is grace?"},
            {"role": "user", "content": "[[echo]] And mercy?"},
        ])
        history = page.evaluate("""() => [...document.querySelectorAll('#history .turn')].map((t) => [
            t.querySelector('.question-text').textContent, t.querySelector('.answer').textContent])""")
        self.assertEqual(history, [["[[echo]] What is grace?", "What is grace?"]])
        self.assertEqual(page.text_content("#question"), "[[echo]] And mercy?")
        self.assertEqual(page.text_content("#output"), "And mercy?")

        page.click("#newBtn")
        self.assertEqual(page.locator("#history .turn").count(), 0)
        self.assertEqual(page.text_content("#output"), "")
        self.assertEqual(self.ask(page, "[[echo]] Fresh start"), "Done")
        self.assertEqual(self.last_request()["messages"], [{"role": "user", "content": "[[echo]] Fresh start"}])
        self.assertNoErrors()

    def test_enter_sends_and_shift_enter_adds_a_line(self):
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
        self.assertEqual(page.evaluate("() => [...document.querySelectorAll('#output br')].length"), 1)
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
        self.assertEqual(status, "Error: this proxy needs an API key (401). Enter it in the API key field and "
                                 "send again.")
        page.fill("#apiKey", "wrong-key")
        status = self.ask(page, "[[echo]] hello")
        self.assertEqual(status, "Error: the API key was not accepted (401). Check the key and send again.")

        page.fill("#apiKey", self.KEY)
        self.assertEqual(self.ask(page, "[[echo]] hello"), "Done")
        self.assertEqual(self.keyed_fake.requests[-1]["body"]["messages"][-1]["content"], "[[echo]] hello")
        self.assertEqual(page.evaluate("() => sessionStorage.getItem('glooStream.apiKey')"), self.KEY)
        page.reload()
        page.wait_for_selector("#apiKey", state="visible")
        self.assertEqual(page.input_value("#apiKey"), self.KEY, "kept in sessionStorage for the tab")
        self.assertNoErrors(allow_failed_resource=True)


class RendererTest(PageTestCase):
    """GlooMarkdown.render and GlooSSE run inside the page, on data tables and random input."""

    def test_markdown_vectors(self):
        link = 'rel="noopener noreferrer" target="_blank"'
        cases = [
            ("# Title", "<h1>Title</h1>"),
            ("## Sub ##", "<h2>Sub</h2>"),
            ("###### six", "<h6>six</h6>"),
            ("a **b** *c* `d` __e__ _f_", "<p>a <strong>b</strong> <em>c</em> <code>d</code> <strong>e</strong> <em>f</em></p>"),
            ("***both***", "<p><strong><em>both</em></strong></p>"),
            ("**a *b* c**", "<p><strong>a <em>b</em> c</strong></p>"),
            ("**unclosed", "<p>**unclosed</p>"),
            ("`unclosed", "<p>`unclosed</p>"),
            ("[half](https://exa", "<p>[half](https://exa</p>"),
            ("snake_case_name and 2 * 3 * 4", "<p>snake_case_name and 2 * 3 * 4</p>"),
            ("```py\nx = 1", '<pre><code class="language-py">x = 1</code></pre>'),
            ("```\n<b>x</b>\n```\nafter", "<pre><code>&lt;b&gt;x&lt;/b&gt;</code></pre><p>after</p>"),
            ("```bad lang\"<x>\ny\n```", '<pre><code class="language-bad">y</code></pre>'),
            ("```<x>\ny\n```", "<pre><code>y</code></pre>"),
            ("1. a\n2. b", "<ol><li>a</li><li>b</li></ol>"),
            ("- a\n- b\n\ntext", "<ul><li>a</li><li>b</li></ul><p>text</p>"),
            ("- a\n  - b\n- c", "<ul><li>a<ul><li>b</li></ul></li><li>c</li></ul>"),
            ("1. one\n   - sub", "<ol><li>one<ul><li>sub</li></ul></li></ol>"),
            ("Steps:\n1. a", "<p>Steps:</p><ol><li>a</li></ol>"),
            ("line1\nline2", "<p>line1<br>line2</p>"),
            ("para1\n\npara2", "<p>para1</p><p>para2</p>"),
            ("[x](https://e.com/a_b)", f'<p><a href="https://e.com/a_b" {link}>x</a></p>'),
            ("[x](http://e.com \"title\")", f'<p><a href="http://e.com/" {link}>x</a></p>'),
            ("<https://e.com>", f'<p><a href="https://e.com/" {link}>https://e.com</a></p>'),
            ("see https://e.com/x.", f'<p>see <a href="https://e.com/x" {link}>https://e.com/x</a>.</p>'),
            ("[x](javascript:alert(1))", "<p>x</p>"),
            ("[x](JaVaScRiPt:alert(1))", "<p>x</p>"),
            ("[x](data:text/html,hi)", "<p>x</p>"),
            ("[x](/relative)", "<p>x</p>"),
            ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"),
            ('<img src=x onerror="alert(1)">', '<p>&lt;img src=x onerror="alert(1)"&gt;</p>'),
            ("&lt;b&gt; &amp;", "<p>&amp;lt;b&amp;gt; &amp;amp;</p>"),
            ("\\*not em\\*", "<p>*not em*</p>"),
            ("---", ""),
            ("", ""),
            ("a\r\nb\rc", "<p>a<br>b<br>c</p>"),
        ]
        page = self.open_page()
        rendered = page.evaluate("""(sources) => sources.map((text) => {
          const box = document.createElement('div');
          box.appendChild(window.GlooMarkdown.render(text));
          return box.innerHTML;
        })""", [source for source, _ in cases])
        for (source, expected), got in zip(cases, rendered):
            with self.subTest(source=source):
                self.assertEqual(got, expected)
        self.assertNoErrors()

    def test_renderer_only_builds_allowed_elements_on_hostile_and_random_input(self):
        page = self.open_page()
        report = page.evaluate("""(allowed) => {
          const pieces = ['<script>window.__pwned=1</script>', '<img src=x onerror="window.__pwned=1">',
            '<a href="javascript:window.__pwned=1">', '<svg onload=window.__pwned=1>', '<iframe src=x>',
            '[', ']', '(', ')', '](', '](javascript:window.__pwned=1)', '](https://ok.example/p)',
            '](http://x.y/"onmouseover="window.__pwned=1)', '](data:text/html,x)', '<', '>', '<https://a.b/>',
            '<javascript:x>', '*', '**', '***', '_', '__', '`', '``', '```', '```js\\n', '~~~', '\\n', '\\n\\n',
            '\\r', '\\r\\n', '# ', '## ', '- ', '* ', '+ ', '1. ', '2) ', '   ', '\\t', 'https://e.com/a',
            'http://', 'javascript:', ' on', 'click=', '"', "'", '&', '&lt;', '\\\\', 'word', 'x', ' ',
            '\\u0000', '\\u202e', '\\ufeff', '😀', 'é'];
          let seed = 20240611;
          const random = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
          const bad = [];
          const sandbox = document.createElement('div');
          sandbox.className = 'visually-hidden';
          document.body.appendChild(sandbox);
          const check = (text) => {
            let fragment;
            try { fragment = window.GlooMarkdown.render(text); }
            catch (e) { bad.push('threw on ' + JSON.stringify(text) + ': ' + e); return; }
            if (!(fragment instanceof DocumentFragment)) { bad.push('not a fragment'); return; }
            for (const el of fragment.querySelectorAll('*')) {
              if (!allowed.includes(el.tagName)) bad.push(el.tagName + ' from ' + JSON.stringify(text));
              for (const attr of el.attributes) {
                const ok = (attr.name === 'href' && el.tagName === 'A' && /^https?:\\/\\//.test(attr.value)) ||
                  (attr.name === 'rel' && el.tagName === 'A' && attr.value === 'noopener noreferrer') ||
                  (attr.name === 'target' && el.tagName === 'A' && attr.value === '_blank') ||
                  (attr.name === 'class' && el.tagName === 'CODE' && /^language-[A-Za-z0-9_+#.-]+$/.test(attr.value));
                if (!ok) bad.push(el.tagName + ' ' + attr.name + '=' + attr.value + ' from ' + JSON.stringify(text));
              }
              if (el.tagName === 'A' && !(el.getAttribute('href') && el.rel && el.target)) bad.push('bare link');
            }
            sandbox.replaceChildren(fragment);
          };
          let rendered = 0;
          for (const piece of pieces) { check(piece); rendered++; }
          for (let n = 0; n < 3000; n++) {
            let text = '';
            const length = 1 + Math.floor(random() * 24);
            for (let k = 0; k < length; k++) text += pieces[Math.floor(random() * pieces.length)];
            check(text);
            rendered++;
          }
          // Every prefix of a long answer, as the page renders it while streaming.
          const doc = pieces.join(' ') + '\\n# Head\\n- a **b\\n1. `c\\n```py\\nx\\n```\\n[l](https://x.y/) end';
          for (let i = 0; i <= doc.length; i++) { check(doc.slice(0, i)); rendered++; }
          // Pathological input stays fast (no quadratic blow-up on unmatched delimiters).
          const started = performance.now();
          check('*a '.repeat(4000) + '`'.repeat(3) + ' _b'.repeat(4000) + '['.repeat(4000));
          const slowMs = performance.now() - started;
          sandbox.remove();
          return {bad: bad.slice(0, 20), rendered, slowMs, pwned: window.__pwned === undefined ? null : String(window.__pwned)};
        }""", ALLOWED_TAGS)
        self.assertEqual(report["bad"], [])
        self.assertGreater(report["rendered"], 3000)
        self.assertIsNone(report["pwned"])
        self.assertLess(report["slowMs"], 1000)
        time.sleep(0.1)  # let any stray handler (onerror, onload) fire before looking
        self.assertIsNone(page.evaluate("() => window.__pwned"))
        self.assertNoErrors()

    def test_sse_parser_line_ends_comments_multiline_data_and_any_split(self):
        page = self.open_page()
        result = page.evaluate("""() => {
          const stream = '\\ufeff: keep-alive\\r\\ndata: {"a":1}\\r\\n\\r\\ndata: line1\\rdata: line2\\r\\r' +
            'id: 7\\nevent: custom\\ndata: x\\n\\n: comment\\n\\ndata:nospace\\ndata:  two\\n\\n' +
            'data: [DONE]\\r\\n\\r\\ndata: caf\\u00e9 \\ud83d\\ude00\\n\\ndata: unterminated';
          const expected = [
            {event: 'message', data: '{"a":1}', id: ''},
            {event: 'message', data: 'line1\\nline2', id: ''},
            {event: 'custom', data: 'x', id: '7'},
            {event: 'message', data: 'nospace\\n two', id: '7'},
            {event: 'message', data: '[DONE]', id: '7'},
            {event: 'message', data: 'caf\\u00e9 \\ud83d\\ude00', id: '7'},
          ];
          const run = (parts) => {
            const parser = window.GlooSSE.createParser();
            const out = [];
            for (const part of parts) out.push(...parser.feed(part));
            out.push(...parser.end());
            return JSON.stringify(out.map((e) => ({event: e.event, data: e.data, id: e.id})));
          };
          const want = JSON.stringify(expected);
          const failures = [];
          if (run([stream]) !== want) failures.push('whole: ' + run([stream]));
          if (run([...stream]) !== want) failures.push('one char at a time');
          for (let i = 0; i <= stream.length; i++) {
            for (let j = i; j <= stream.length; j += 7) {
              if (run([stream.slice(0, i), stream.slice(i, j), stream.slice(j)]) !== want) failures.push('split ' + i + ',' + j);
            }
          }
          // A CR ending the body is a line end: the blank line dispatches.
          const tail = run(['data: last\\r', '\\r']);
          const crAtEnd = run(['data: last\\r\\r']);
          // Bytes split inside a multi-byte character, through TextDecoder with stream: true.
          const bytes = new TextEncoder().encode('data: caf\\u00e9 \\ud83d\\ude00\\n\\n');
          const decoder = new TextDecoder('utf-8');
          const parser = window.GlooSSE.createParser();
          const decoded = [];
          for (const b of bytes) decoded.push(...parser.feed(decoder.decode(new Uint8Array([b]), {stream: true})));
          return {failures: failures.slice(0, 5), tail, crAtEnd, decoded: decoded.map((e) => e.data)};
        }""")
        self.assertEqual(result["failures"], [])
        self.assertEqual(result["tail"], '[{"event":"message","data":"last","id":""}]')
        self.assertEqual(result["crAtEnd"], result["tail"])
        self.assertEqual(result["decoded"], ["caf\u00e9 \U0001F600"])


class PageShapeTest(PageTestCase):

    def test_controls_labels_and_initial_state(self):
        page = self.open_page()
        shape = page.evaluate("""() => {
          const $ = (id) => document.getElementById(id);
          const label = (id) => { const l = document.querySelector('label[for=' + id + ']'); return l && l.textContent.trim(); };
          return {
            send: [$('sendBtn').textContent, $('sendBtn').disabled], stop: [$('stopBtn').textContent, $('stopBtn').disabled],
            prompt: [$('prompt').tagName, label('prompt')], status: $('status').textContent,
            live: $('output').getAttribute('aria-live'), meta: $('meta').textContent,
            labels: [label('modelFamily'), label('tradition'), label('apiKey')],
            families: [...$('modelFamily').options].map((o) => o.value),
            traditions: [...$('tradition').options].map((o) => o.value),
            inlineScripts: [...document.scripts].filter((s) => !s.src).length,
            scripts: [...document.scripts].map((s) => new URL(s.src).pathname),
            styleAttributes: document.querySelectorAll('[style]').length,
            newChat: $('newBtn').textContent,
          };
        }""")
        self.assertEqual(shape, {
            "send": ["Send", False], "stop": ["Stop", True],
            "prompt": ["TEXTAREA", "Your question"], "status": "Ready",
            "live": "polite", "meta": "",
            "labels": ["Model", "Tradition", "API key"],
            "families": ["", "openai", "anthropic", "google", "open source"],
            "traditions": ["", "evangelical", "catholic", "mainline", "not_faith_specific"],
            "inlineScripts": 0, "scripts": ["/markdown.js", "/sse.js", "/app.js"],
            "styleAttributes": 0, "newChat": "New chat",
        })
        self.assertNoErrors()

    def test_served_with_a_strict_content_security_policy(self):
        page = self.open_page()
        response = page.request.get(self.proxy.url + "/")
        self.assertIn("default-src 'self'", response.headers["content-security-policy"])
        self.assertEqual(response.headers["x-content-type-options"], "nosniff")
        self.assertEqual(self.ask(page, "[[markdown]]"), "Done")  # everything ran under that policy
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
                          prompt: box('prompt'), send: box('sendBtn'), stop: box('stopBtn'), status: box('status'),
                          bg: style('body', 'backgroundColor'), text: style('body', 'color'),
                          muted: style('#meta', 'color'), surface: style('.composer-area', 'backgroundColor')};
                }""")
                self.assertLessEqual(layout["scrollWidth"], 390, "no sideways scrolling on a phone")
                for name in ("prompt", "send", "stop", "status"):
                    left, right, top, bottom = layout[name]
                    self.assertTrue(0 <= left < right <= 390 and 0 <= top < bottom <= 844, f"{name} {layout[name]}")
                self.assertGreaterEqual(layout["prompt"][1] - layout["prompt"][0], 200, "a usable question box")
                self.assertGreaterEqual(_contrast(layout["text"], layout["bg"]), 7)
                self.assertGreaterEqual(_contrast(layout["muted"], layout["surface"]), 4.5)
                colours[scheme] = _luminance(layout["bg"])
        self.assertGreater(colours["light"], 0.8)
        self.assertLess(colours["dark"], 0.05)
        self.assertNoErrors()


def _rgb(css: str) -> List[float]:
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
