"""The client against the simulator on loopback: streaming, tokens, retries, failures."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import threading
import unittest

import gloo_stream
from fake_gloo import FakeGloo
from gloo_stream import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ConnectionLostError,
    EventTooLargeError,
    GlooClient,
    ProviderError,
    RateLimitError,
    ServerError,
    StreamTimeoutError,
    TokenError,
    UnexpectedResponseError,
)
from tests.support import IsolatedTestCase


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SimulatorTestCase(IsolatedTestCase):
    """A fresh simulator per test, and a client pointed at it whose sleeps are recorded, not slept."""

    fake_options: dict = {}

    def setUp(self) -> None:
        super().setUp()
        self.fake = FakeGloo(**self.fake_options)
        self.fake.start()
        self.addCleanup(self.fake.stop)
        self.sleeps: list = []

    def client(self, **options) -> GlooClient:
        settings = dict(client_id=self.fake.client_id, client_secret=self.fake.client_secret,
                        token_url=self.fake.token_url, api_url=self.fake.api_url, sleep=self.sleeps.append)
        settings.update(options)
        return GlooClient(**settings)


class StreamingTests(SimulatorTestCase):
    def test_deltas_join_to_the_answer(self):
        client = self.client()
        deltas = list(client.stream("What is the significance of the resurrection?"))
        self.assertGreater(len(deltas), 10)
        result = client.complete("What is the significance of the resurrection?")
        self.assertEqual("".join(deltas), result.text)
        self.assertIn("resurrection", result.text.lower())
        self.assertEqual(result.finish_reason, "stop")
        self.assertEqual(result.token_count, len(deltas))
        self.assertIsNone(result.error)
        self.assertTrue(result.model)

    def test_stream_headers_ignore_case(self):
        with self.client().stream("[[echo]] hi") as stream:
            self.assertEqual(stream.headers["content-type"], stream.headers["Content-Type"])
            self.assertTrue(stream.headers.get("CONTENT-TYPE", "").startswith("text/event-stream"))
            self.assertEqual("".join(stream), "hi")

    def test_request_body(self):
        self.client().complete("Hi", temperature=0.5, max_tokens=50, tradition="catholic")
        body = self.fake.requests[-1]["body"]
        self.assertEqual(body["messages"], [{"role": "user", "content": "Hi"}])
        self.assertEqual((body["stream"], body["auto_routing"], body["temperature"], body["max_tokens"],
                          body["tradition"]), (True, True, 0.5, 50, "catholic"))
        self.assertNotIn("model", body)

    def test_model_family_replaces_auto_routing(self):
        self.client().complete("Hi", model_family="anthropic")
        body = self.fake.requests[-1]["body"]
        self.assertEqual(body["model_family"], "anthropic")
        self.assertNotIn("auto_routing", body)

    def test_chat_messages_and_system(self):
        messages = [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
                    {"role": "user", "content": "C"}]
        self.client().complete(messages, system="Be brief.")
        self.assertEqual(self.fake.requests[-1]["body"]["messages"],
                         [{"role": "system", "content": "Be brief."}] + messages)

    def test_bearer_token_sent(self):
        self.client().complete("Hi")
        self.assertEqual(self.fake.requests[-1]["headers"].get("Authorization"),
                         "Bearer " + self.fake.issued_tokens[-1])

    def test_openai_style_usage_after_finish_and_done(self):
        result = self.client().complete("Hi [[openai]]", include_usage=True)  # usage only when asked
        self.assertEqual(result.finish_reason, "stop")
        self.assertIsInstance(result.usage, dict)
        self.assertIn("total_tokens", result.usage)

    def test_gloo_style_usage_on_finish_chunk(self):
        result = self.client().complete("Hi", include_usage=True)
        self.assertIsInstance(result.usage, dict)
        self.assertIsNone(self.client().complete("Hi").usage)

    def test_tool_calls_merged(self):
        result = self.client().complete("Look it up [[tools]]")
        self.assertEqual(result.finish_reason, "tool_calls")
        self.assertEqual([call["index"] for call in result.tool_calls], [0, 1])
        for call in result.tool_calls:
            self.assertTrue(call["id"])
            self.assertTrue(call["function"]["name"])
            gloo_stream.json.loads(call["function"]["arguments"])  # whole JSON once merged

    def test_wire_variants_give_the_same_text(self):
        plain = self.client().complete("[[echo]] Grâce — ἀγάπη 🙏 and more words here").text
        for marker in ("[[crlf]]", "[[cr]]", "[[heartbeat]]", "[[trickle:0]]"):
            with self.subTest(marker):
                result = self.client().complete(f"[[echo]] Grâce — ἀγάπη 🙏 and more words here{marker}")
                self.assertEqual(result.text, plain)
                self.assertEqual(result.finish_reason, "stop")

    def test_utf8_split_across_writes(self):
        result = self.client().complete("[[split_utf8]]")
        self.assertNotIn("\ufffd", result.text)
        self.assertIn("🙏", result.text)

    def test_long_stream(self):
        result = self.client().complete("[[long:3000]]")
        self.assertEqual(result.token_count, 3000)

    def test_timing_fields(self):
        self.fake.delay = 0.02
        result = self.client().complete("Hi [[long:10]]")
        self.assertGreaterEqual(result.duration_ms, 150)
        self.assertIsNotNone(result.ttft_ms)
        self.assertLessEqual(result.ttft_ms, result.duration_ms)


class StructuredOutputTests(SimulatorTestCase):
    """complete(response_format=...): the forced tool call that carries it out, and the parsed object."""

    SCHEMA = {"type": "object", "properties": {"book": {"type": "string"}, "chapters": {"type": "integer"}},
              "required": ["book", "chapters"]}

    def fmt(self, schema=None):
        return {"type": "json_schema", "json_schema": {"name": "book", "schema": schema or self.SCHEMA}}

    def test_the_answer_is_the_parsed_object(self):
        result = self.client().complete("Tell me about Mark", response_format=self.fmt())
        self.assertIsNone(result.error)
        self.assertEqual(set(result.parsed), {"book", "chapters"})
        self.assertIsInstance(result.parsed["chapters"], int)
        self.assertEqual(json.loads(result.text), result.parsed)
        self.assertEqual((result.tool_calls, result.finish_reason), ([], "stop"))
        sent = self.fake.requests[-1]["body"]
        self.assertNotIn("response_format", sent)  # Gloo documents none: a forced tool instead
        self.assertEqual(sent["tool_choice"], "required")
        self.assertEqual([t["function"]["parameters"] for t in sent["tools"]], [self.SCHEMA])
        self.assertIsInstance(self.client().complete("Hi", response_format={"type": "json_object"}).parsed, dict)
        plain = self.client().complete("Hi", response_format={"type": "text"})
        self.assertIsNone(plain.parsed)
        self.assertNotIn("tools", self.fake.requests[-1]["body"])

    def test_an_answer_that_does_not_fit_says_why(self):
        for arguments, why in (('{"book": "Mark"', "not valid JSON"), ('{"book": "Mark"}', "lacks chapters")):
            with self.subTest(arguments=arguments):
                call = {"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "structured_answer", "arguments": arguments}}
                self.fake.enqueue(200, {"Content-Type": "text/event-stream"}, [
                    b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}).encode()
                    + b"\n\n",
                    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n'])
                result = self.client().complete("Hi", response_format=self.fmt())
                self.assertIsNone(result.parsed)
                self.assertIn(why, result.error)
                self.assertEqual(result.text, arguments)  # what the model gave is kept

    def test_a_bad_format_or_one_beside_tools_is_refused_before_any_request(self):
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        for options in ({"response_format": {"type": "xml"}}, {"response_format": "json"},
                        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
                        {"response_format": self.fmt(), "tools": [tool]}):
            with self.subTest(options=options):
                with self.assertRaises(gloo_stream.ConfigurationError):
                    self.client().complete("Hi", **options)
        self.assertEqual(self.fake.requests, [])


class MidStreamFailureTests(SimulatorTestCase):
    def test_drop_keeps_partial_text(self):
        result = self.client().complete("[[echo]] one two three four five [[drop:3]]")
        self.assertEqual(result.token_count, 3)
        self.assertEqual(result.text, "one two three")
        self.assertNotEqual(result.finish_reason, "stop")
        self.assertIn("ended before", result.error)

    def test_drop_raises_with_partial_text_when_iterating(self):
        stream = self.client().stream("Tell me more [[drop:3]]")
        seen = []
        with self.assertRaises(ConnectionLostError) as caught:
            for delta in stream:
                seen.append(delta)
        self.assertEqual(caught.exception.text, "".join(seen))
        self.assertTrue(caught.exception.retryable)

    def test_error_event_keeps_partial_text(self):
        stream = self.client().stream("[[echo]] one two three four five [[error]]")
        with self.assertRaises(ProviderError) as caught:
            for _ in stream:
                pass
        error = caught.exception
        self.assertEqual(error.name, "PROVIDER_TIMEOUT")
        self.assertEqual(error.code, 2001)  # Gloo's internal code, not an HTTP status
        self.assertEqual(error.text, "one two three")
        result = self.client().complete("[[echo]] one two three four five [[error]]")
        self.assertEqual(result.finish_reason, "error")
        self.assertIn("PROVIDER_TIMEOUT", result.error)
        self.assertEqual(result.text, "one two three")

    def test_content_filter_is_final_and_not_retried(self):
        result = self.client().complete("Hi [[content_filter]]")
        self.assertEqual(result.finish_reason, "content_filter")
        self.assertIsNone(result.error)
        self.assertEqual(len(self.fake.requests), 1)

    def test_stall_hits_the_idle_timeout(self):
        result = self.client(read_timeout=0.3).complete("[[echo]] one two three [[stall]]")
        self.assertIn("no data from the server for 0.3s", result.error)  # this timeout, not another
        self.assertEqual(result.text, "one")  # the first content chunk, then silence
        self.assertTrue(self.fake.wait_for_disconnect(3))

    def test_stall_raises_stream_timeout(self):
        with self.assertRaises(StreamTimeoutError):
            for _ in self.client(read_timeout=0.3).stream("Hi [[stall]]"):
                pass

    def test_total_deadline(self):
        self.fake.delay = 0.05
        result = self.client(deadline=0.4).complete("Hi [[long:200]]")
        self.assertIn("passed its 0.4s deadline", result.error)

    def test_event_over_the_limit(self):
        result = self.client(max_event_bytes=64 * 1024).complete("[[huge_event:300000]]")
        self.assertIn("limit", result.error)
        with self.assertRaises(EventTooLargeError):
            for _ in self.client(max_event_bytes=64 * 1024).stream("[[huge_event:300000]]"):
                pass

    def test_never_retried_after_first_byte(self):
        self.client().complete("Hi [[drop:2]]")
        self.assertEqual(len(self.fake.requests), 1)


class EveryScenarioTests(SimulatorTestCase):
    """Each simulator scenario through the client: the outcome a caller sees."""

    CASES = [
        # prompt, finish_reason, error contains (None: no error), check on the text
        ("Hi", "stop", None, lambda t: t.startswith("You asked: \u201cHi\u201d.") and len(t) > 100),
        ("[[openai]]", "stop", None, None),
        ("[[usage]]", "stop", None, None),
        ("[[markdown]]", "stop", None, lambda t: "```" in t and "**" in t),
        ("[[hostile]]", "stop", None, lambda t: "<script>" in t),
        ("[[echo]] ping", "stop", None, lambda t: t.strip() == "ping"),
        ("[[stamp]]", "stop", None, None),
        ("[[long:7]]", "stop", None, None),
        ("[[heartbeat]]", "stop", None, None),
        ("[[crlf]]", "stop", None, None),
        ("[[cr]]", "stop", None, None),
        ("[[split_utf8]]", "stop", None, lambda t: "\ufffd" not in t),
        ("[[trickle:0]]", "stop", None, None),
        ("[[tools]]", "tool_calls", None, lambda t: t == ""),
        ("[[content_filter]]", "content_filter", None, None),
        ("[[error]] [[echo]] one two three four", "error", "PROVIDER_TIMEOUT", lambda t: t == "one two three"),
        ("[[drop:2]] [[echo]] one two three", "unknown", "ended before", lambda t: t == "one two"),
        ("[[reset]]", "unknown", "ended before", lambda t: t == ""),
        ("[[garbage]]", "unknown", "ended before", None),
        ("[[stall:0.2]]", "stop", None, None),
    ]

    def test_every_scenario(self):
        client = self.client()
        with concurrent.futures.ThreadPoolExecutor(len(self.CASES)) as pool:  # one client, many threads
            results = list(pool.map(lambda case: client.complete(case[0]), self.CASES))
        for (prompt, finish, error, check), result in zip(self.CASES, results):
            with self.subTest(prompt):
                self.assertEqual(result.finish_reason, finish, result.error)
                if error is None:
                    self.assertIsNone(result.error)
                else:
                    self.assertIn(error, result.error)
                if check is not None:
                    self.assertTrue(check(result.text), result.text[:200])


class EarlyStopTests(SimulatorTestCase):
    def test_break_closes_the_connection(self):
        self.fake.delay = 0.05
        stream = self.client().stream("Hi [[long:200]]")
        for _ in stream:
            break
        stream.close()
        self.assertTrue(stream.closed)
        self.assertTrue(self.fake.wait_for_disconnect(3))

    def test_generator_close_closes_the_connection(self):
        self.fake.delay = 0.05
        stream = self.client().stream("Hi [[long:200]]")
        iterator = iter(stream)
        next(iterator)
        iterator.close()
        self.assertTrue(stream.closed)
        self.assertTrue(self.fake.wait_for_disconnect(3))

    def test_context_manager_closes(self):
        with self.client().stream("Hi [[stall]]") as stream:
            next(iter(stream))
        self.assertTrue(self.fake.wait_for_disconnect(3))

    def test_abort_from_another_thread_unblocks_a_read(self):
        stream = self.client().stream("Hi [[stall]]")
        iterator = iter(stream)
        next(iterator)
        timer = threading.Timer(0.2, stream.abort)
        timer.start()
        with self.assertRaises(ConnectionLostError):  # (without the abort: a StreamTimeoutError, 60 s on)
            for _ in iterator:
                pass


class PreStreamStatusTests(SimulatorTestCase):
    def test_status_mapping(self):
        cases = [(400, BadRequestError), (403, gloo_stream.PermissionDeniedError), (404, gloo_stream.NotFoundError),
                 (422, gloo_stream.UnprocessableEntityError)]
        for status, cls in cases:
            with self.subTest(status=status):
                with self.assertRaises(cls) as caught:
                    self.client().complete(f"Hi [[status:{status}]]")
                self.assertEqual(caught.exception.status, status)
                self.assertTrue(caught.exception.body)

    def test_retryable_statuses_retry_then_raise(self):
        for status in (408, 500, 502, 503, 504):
            with self.subTest(status=status):
                before = len(self.fake.requests)
                with self.assertRaises(ServerError):
                    self.client(max_retries=2, backoff_base=0.001).complete(f"Hi {status} [[status:{status}]]")
                self.assertEqual(len(self.fake.requests) - before, 3)

    def test_retry_then_success(self):
        result = self.client().complete("Hi [[fail:503:2]]")
        self.assertEqual(result.finish_reason, "stop")
        self.assertEqual(self.sleeps, [0.0, 0.0])  # Retry-After: 0 honoured

    def test_rate_limit_honours_retry_after(self):
        with self.assertRaises(RateLimitError) as caught:
            self.client(max_retries=1).complete("Hi [[status:429]]")
        self.assertEqual(self.sleeps, [1.0])
        self.assertEqual(caught.exception.retry_after, 1.0)
        self.assertEqual(str(caught.exception), "Rate limit exceeded (429): Too many requests")

    def test_too_long_retry_after_raises_at_once(self):
        with self.assertRaises(RateLimitError) as caught:
            self.client(max_retry_wait=30).complete("Hi [[status:429:retry=120]]")
        self.assertEqual(self.sleeps, [])
        self.assertEqual(caught.exception.retry_after, 120.0)

    def test_no_retries_when_zero(self):
        with self.assertRaises(ServerError):
            self.client(max_retries=0).complete("Hi [[status:500]]")
        self.assertEqual(len(self.fake.requests), 1)

    def test_401_refreshes_the_token_once(self):
        with self.assertRaises(AuthenticationError) as caught:
            self.client().complete("Hi [[status:401]]")
        self.assertEqual(self.fake.token_requests, 2)
        self.assertEqual(len(self.fake.requests), 2)
        self.assertEqual(str(caught.exception), "Authentication failed (401): Invalid or expired token")

    def test_html_instead_of_event_stream(self):
        with self.assertRaises(UnexpectedResponseError) as caught:
            self.client().complete("Hi [[html]]")
        self.assertIn("text/html", str(caught.exception))

    def test_connection_refused_retries_then_raises(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        client = self.client(api_url=f"http://127.0.0.1:{port}/ai/v2/chat/completions")
        with self.assertRaises(APIConnectionError) as caught:
            client.complete("Hi")
        self.assertEqual(len(self.sleeps), 2)
        self.assertIn(f"127.0.0.1:{port}", str(caught.exception))

    def test_backoff_is_exponential_with_jitter(self):
        client = self.client(backoff_base=0.5, backoff_max=8)
        for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)]:
            for _ in range(20):
                wait = client._backoff(attempt, None)
                self.assertGreaterEqual(wait, ceiling / 2)
                self.assertLessEqual(wait, ceiling)


class TokenTests(SimulatorTestCase):
    def test_one_token_for_many_calls(self):
        client = self.client()
        for _ in range(5):
            client.complete("Hi")
        self.assertEqual(self.fake.token_requests, 1)

    def test_one_token_for_many_threads(self):
        client = self.client()
        tokens = []
        threads = [threading.Thread(target=lambda: tokens.append(client.token())) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(len(set(tokens)), 1)
        self.assertEqual(self.fake.token_requests, 1)

    def test_refresh_five_minutes_before_expiry(self):
        clock = FakeClock()
        client = self.client(clock=clock)
        first = client.token()
        clock.now += 3600 - 301
        self.assertEqual(client.token(), first)
        clock.now += 2
        self.assertNotEqual(client.token(), first)
        self.assertEqual(self.fake.token_requests, 2)

    def test_token_request_is_a_form_with_the_credentials(self):
        self.client().token()
        self.assertEqual(self.fake.token_requests, 1)  # the simulator accepted the form body

    def test_wrong_secret_is_a_token_error_without_the_secret(self):
        client = self.client(client_secret="wrong-secret-value-123456")
        with self.assertRaises(TokenError) as caught:
            client.complete("Hi")
        self.assertEqual(caught.exception.status, 401)
        self.assertNotIn("wrong-secret-value-123456", str(caught.exception))
        self.assertIn("GLOO_CLIENT_ID", str(caught.exception))

    def test_token_endpoint_down(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        client = self.client(token_url=f"http://127.0.0.1:{port}/oauth2/token")
        with self.assertRaises(TokenError) as caught:
            client.token()
        self.assertIn("unreachable", str(caught.exception))

    def test_static_api_key_skips_oauth(self):
        fake = FakeGloo(api_key="static-key-abcdef123")
        fake.start()
        self.addCleanup(fake.stop)
        client = GlooClient(api_key="static-key-abcdef123", api_url=fake.api_url)
        self.assertEqual(client.complete("Hi").finish_reason, "stop")
        self.assertEqual(fake.token_requests, 0)

    def test_missing_credentials(self):
        with self.assertRaises(gloo_stream.ConfigurationError) as caught:
            GlooClient()
        message = str(caught.exception)
        for name in ("GLOO_CLIENT_ID", "GLOO_CLIENT_SECRET", ".env"):
            self.assertIn(name, message)


class ShortTokenLifetimeTests(SimulatorTestCase):
    fake_options = {"expires_in": 60}

    def test_short_lifetime_refreshes_halfway(self):
        clock = FakeClock()
        client = self.client(clock=clock)
        first = client.token()
        clock.now += 29
        self.assertEqual(client.token(), first)
        clock.now += 2
        self.assertNotEqual(client.token(), first)


class OutboundProxyTests(SimulatorTestCase):
    def test_http_proxy_from_the_environment_is_used(self):
        # The simulator stands in for a forward proxy: with HTTP_PROXY set, urllib sends it the
        # absolute URL of a host that does not exist (.invalid is reserved), and it answers.
        os.environ.pop("NO_PROXY", None)
        os.environ.pop("no_proxy", None)
        os.environ["HTTP_PROXY"] = self.fake.base_url
        client = self.client(token_url="http://gloo.invalid/oauth2/token",
                             api_url="http://gloo.invalid/ai/v2/chat/completions")
        self.assertEqual(client.complete("Hi").finish_reason, "stop")
        self.assertEqual(self.fake.requests[-1]["path"], "http://gloo.invalid/ai/v2/chat/completions")

    def test_no_proxy_bypasses_it(self):
        os.environ["HTTP_PROXY"] = "http://127.0.0.1:9"  # nothing listens there: using it would fail
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1"
        self.assertEqual(self.client().complete("Hi").finish_reason, "stop")


class RetryAfterParsingTests(unittest.TestCase):
    def test_values(self):
        now = 1_700_000_000.0
        cases = [
            ({"Retry-After": "3"}, 3.0),
            ({"Retry-After": "0"}, 0.0),
            ({"Retry-After": "1.5"}, 1.5),
            ({"Retry-After": "Tue, 14 Nov 2023 22:13:25 GMT"}, 5.0),
            ({"X-RateLimit-Reset": "7"}, 7.0),
            ({"X-RateLimit-Reset": str(int(now) + 12)}, 12.0),
            ({"Retry-After": "2", "X-RateLimit-Reset": "9"}, 2.0),
            ({"Retry-After": "soon"}, None),
            ({}, None),
        ]
        for headers, expected in cases:
            with self.subTest(headers=headers):
                self.assertEqual(gloo_stream._parse_retry_after(headers, now=lambda: now), expected)


if __name__ == "__main__":
    unittest.main()
