"""Gloo's whole streaming API through the client: grounded answers, API keys and endpoints, Gloo's
errors, routing metadata, tutorial compatibility; and the simulator held to Gloo's documented rules."""

from __future__ import annotations

import json
import os
import time
import unittest
from unittest import mock

import gloo_stream
from gloo_stream import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    GlooClient,
    RateLimitError,
    SpendLimitError,
    TutorialResponse,
    UnprocessableEntityError,
    get_access_token,
    handle_stream_error,
    make_streaming_request,
    parse_sse_line,
    stream_completion,
)
from tests.test_client import SimulatorTestCase
from tests.test_fake_gloo import chat, get_token, request

QUESTION = "What is the significance of the resurrection?"


class GlooTestCase(SimulatorTestCase):
    """A fresh simulator per test that also takes a Studio API key."""

    fake_options: dict = {"api_key": "studio-key-0123456789"}


class GroundedTests(GlooTestCase):
    def test_stream_with_a_publisher_goes_to_the_grounded_endpoint(self):
        stream = self.client().stream(QUESTION, publisher="MyChurch", sources_limit=2)
        text = "".join(stream)
        request = self.fake.requests[-1]
        self.assertEqual(request["path"], "/ai/v2/chat/completions/grounded")
        self.assertEqual((request["body"]["rag_publisher"], request["body"]["sources_limit"],
                          request["body"]["include_citations"]), ("MyChurch", 2, True))
        result = stream.result()
        self.assertEqual(result.text, text)
        self.assertIn("resurrection", text.lower())
        self.assertEqual(len(result.sources), 2)
        self.assertTrue(result.sources_returned)
        for source in result.sources:
            self.assertTrue(source["url"].startswith("https://"))
            self.assertEqual(source["publisher"], "MyChurch")
            self.assertTrue(source["title"])
            self.assertNotIn(source["title"], text)  # citations are never counted as text
        self.assertEqual(result.outcome.kind, "finished")

    def test_citations_never_count_as_tokens(self):
        plain = self.client().complete(QUESTION)
        grounded = self.client().complete(QUESTION, sources_limit=3)
        self.assertEqual((grounded.text, grounded.token_count), (plain.text, plain.token_count))
        self.assertEqual(len(grounded.sources), 3)
        self.assertIsNone(plain.sources_returned)
        self.assertEqual(plain.sources, [])

    def test_grounded_true_uses_the_default_publisher(self):
        self.client().complete("Hi", grounded=True)
        self.assertEqual(self.fake.requests[-1]["body"]["rag_publisher"], "GlooGrounded")

    def test_no_sources_found(self):
        result = self.client().complete("Hi [[no_sources]]", publisher="Empty")
        self.assertEqual((result.sources, result.sources_returned), ([], False))

    def test_citations_can_be_declined(self):
        result = self.client().complete("Hi", publisher="P", include_citations=False)
        self.assertEqual(result.sources, [])
        self.assertTrue(result.sources_returned)  # RAG was used, the list was not asked for

    def test_tutorial_functions_take_a_publisher(self):
        os.environ.update(self.fake.env)
        result = stream_completion(QUESTION, publisher="GlooGrounded", sources_limit=1)
        self.assertEqual(len(result["sources"]), 1)
        self.assertTrue(result["sources_returned"])
        with make_streaming_request("Hi", publisher="GlooGrounded") as response:
            lines = list(response.iter_lines(decode_unicode=True))
        self.assertEqual(self.fake.requests[-1]["path"], "/ai/v2/chat/completions/grounded")
        first = parse_sse_line(next(line for line in lines if line.startswith("data:")))
        self.assertEqual((first["choices"], first["sources_returned"]), ([], True))
        self.assertTrue(first["citations"])

    def test_is_grounded(self):
        self.assertTrue(gloo_stream.is_grounded({"rag_publisher": "x"}))
        self.assertTrue(gloo_stream.is_grounded({"sources_limit": 3}))
        self.assertFalse(gloo_stream.is_grounded({"messages": [], "rag_publisher": None}))


class ApiKeyAndEndpointTests(GlooTestCase):
    def test_studio_key_against_the_guarded_endpoint(self):
        client = GlooClient(api_key=self.fake.api_key, api_url=self.fake.api_url, endpoint="guarded")
        self.assertEqual(client.api_url, self.fake.base_url + "/ai/v2/guarded/chat/completions")
        result = client.complete("Hi")
        self.assertEqual(result.outcome.kind, "finished")
        request = self.fake.requests[-1]
        self.assertEqual(request["path"], "/ai/v2/guarded/chat/completions")
        self.assertEqual(request["headers"]["Authorization"], "Bearer " + self.fake.api_key)
        self.assertEqual(self.fake.token_requests, 0)

    def test_endpoint_from_the_environment(self):
        with mock.patch.dict(os.environ, {"GLOO_API_KEY": self.fake.api_key, "GLOO_API_URL": self.fake.api_url,
                                          "GLOO_ENDPOINT": "guarded"}):
            client = GlooClient()
        self.assertEqual(client.endpoint, "guarded")
        self.assertTrue(client.api_url.endswith("/ai/v2/guarded/chat/completions"))
        self.assertEqual(client.complete("Hi").finish_reason, "stop")

    def test_default_urls(self):
        self.assertEqual(GlooClient(api_key="k" * 12).api_url, "https://platform.ai.gloo.com/ai/v2/chat/completions")
        guarded = GlooClient(api_key="k" * 12, endpoint="guarded")
        self.assertEqual(guarded.api_url, "https://platform.ai.gloo.com/ai/v2/guarded/chat/completions")
        self.assertEqual(GlooClient(api_key="k" * 12).grounded_url,
                         "https://platform.ai.gloo.com/ai/v2/chat/completions/grounded")

    def test_unknown_endpoint_is_a_configuration_error(self):
        with self.assertRaises(ConfigurationError) as caught:
            GlooClient(api_key="k" * 12, endpoint="shielded")
        self.assertIn("GLOO_ENDPOINT", str(caught.exception))

    def test_guarded_grounded(self):
        client = GlooClient(api_key=self.fake.api_key, api_url=self.fake.api_url, endpoint="guarded")
        result = client.complete("Hi", publisher="P", sources_limit=1)
        self.assertEqual(self.fake.requests[-1]["path"], "/ai/v2/guarded/chat/completions/grounded")
        self.assertEqual(len(result.sources), 1)

    def test_missing_credentials_name_the_studio_key(self):
        with self.assertRaises(ConfigurationError) as caught:
            GlooClient()
        self.assertIn("GLOO_API_KEY", str(caught.exception))
        self.assertIn("Studio", str(caught.exception))


class GlooErrorTests(GlooTestCase):
    def test_validation_error_is_human(self):
        with self.assertRaises(UnprocessableEntityError) as caught:
            self.client().stream("Hi", temperature=2.5)
        error = caught.exception
        self.assertEqual(str(error), "API error (422): temperature: Input should be less than or equal to 2")
        self.assertEqual(error.detail[0]["loc"], ["body", "temperature"])
        self.assertEqual(error.detail[0]["type"], "less_than_equal")
        self.assertIsNone(error.code)

    def test_several_validation_errors(self):
        with self.assertRaises(UnprocessableEntityError) as caught:
            self.client().stream("Hi", tradition="pastafarian", max_tokens=0)
        self.assertEqual(len(caught.exception.detail), 2)
        self.assertIn("tradition: Input should be 'evangelical'", str(caught.exception))
        self.assertIn("; max_tokens: Input should be greater than or equal to 1", str(caught.exception))

    def test_unknown_model_is_refused_with_gloo_code(self):
        with self.assertRaises(BadRequestError) as caught:
            self.client().stream("Hi", model="gloo-imaginary-1")
        self.assertEqual(caught.exception.code, "model_not_found")
        self.assertIn("unknown model 'gloo-imaginary-1'", str(caught.exception))
        self.assertIsNone(caught.exception.detail)

    def test_rate_limit_keeps_gloo_code(self):
        with self.assertRaises(RateLimitError) as caught:
            self.client(max_retries=0).stream("Hi [[status:429]]")
        error = caught.exception
        self.assertNotIsInstance(error, SpendLimitError)
        self.assertEqual((error.code, error.spend_limit), ("too_many_requests", False))
        self.assertEqual(str(error), "Rate limit exceeded (429): Too many requests")

    def test_spend_limit_told_apart_and_not_waited_on(self):
        with self.assertRaises(SpendLimitError) as caught:
            self.client().stream("Hi [[spend_limit]]")
        error = caught.exception
        self.assertIsInstance(error, RateLimitError)
        self.assertTrue(error.spend_limit)
        self.assertFalse(error.retryable)
        self.assertEqual(error.code, "spend_limit_exceeded")
        self.assertTrue(str(error).startswith("Spend limit reached (429): Weekly spend limit reached"))
        # When it resets, as a date and a time a person reads (the simulator's reset is days away).
        self.assertRegex(str(error), r" \(it resets \d{4}-\d\d-\d\d \d\d:\d\d UTC, in \d+ days?( \d+ h)?\)$")
        self.assertEqual(self.sleeps, [])  # the reset is days away: no retry
        self.assertEqual(len(self.fake.requests), 1)

    def test_a_reset_reads_as_a_date_and_a_wait(self):
        now = lambda: 1796700000.0  # 2026-12-08 03:20 UTC  # noqa: E731
        cases = [(30, "2026-12-08 03:20 UTC, in 1 min"), (5400, "2026-12-08 04:50 UTC, in 1 h 30 min"),
                 (86400, "2026-12-09 03:20 UTC, in 1 day"),
                 (5 * 86400 + 3 * 3600 + 100, "2026-12-13 06:21 UTC, in 5 days 3 h")]
        for seconds, words in cases:
            with self.subTest(seconds=seconds):
                self.assertEqual(gloo_stream._describe_reset(seconds, now=now), words)
        plain = gloo_stream._status_error(429, '{"error": "Weekly spend limit reached"}')
        self.assertNotIn("resets", str(plain))  # no header, no guess

    def test_auth_error_codes(self):
        with self.assertRaises(AuthenticationError) as caught:
            GlooClient(api_key="wrong-key-123456", api_url=self.fake.api_url).stream("Hi")
        self.assertEqual(caught.exception.code, "unauthorized_invalid_token")
        self.assertEqual(str(caught.exception), "Authentication failed (401): Invalid or expired token")

    def test_bodies_parsed_liberally(self):
        cases = [
            ('{"error": "Rate limit exceeded", "code": "too_many_requests"}', "too_many_requests", None,
             "Rate limit exceeded"),
            ('{"detail": "Not authenticated"}', None, None, "Not authenticated"),
            ('{"error": {"message": "bad thing", "type": "invalid_request_error", "code": "x1"}}', "x1", None,
             "bad thing"),
            ('{"detail": [{"loc": ["body", "messages", 0, "role"], "msg": "Input should be \'user\'"}]}', None,
             [{"loc": ["body", "messages", 0, "role"], "msg": "Input should be 'user'"}],
             "messages[0].role: Input should be 'user'"),
            ("<html>oops</html>", None, None, ""),
            ("", None, None, ""),
        ]
        for body, code, detail, reason in cases:
            with self.subTest(body=body):
                error = gloo_stream._status_error(400, body)
                self.assertEqual((error.code, error.detail, error.reason), (code, detail, reason))

    def test_tutorial_messages_stay_exact(self):
        body = '{"detail": [{"loc": ["body", "temperature"], "msg": "Input should be less than or equal to 2"}]}'
        with self.assertRaises(UnprocessableEntityError) as caught:
            handle_stream_error(422, body)
        self.assertEqual(str(caught.exception), "API error (422): " + body[:200])
        self.assertEqual(caught.exception.detail[0]["loc"], ["body", "temperature"])
        with self.assertRaises(SpendLimitError) as caught:
            handle_stream_error(429, '{"error": "Weekly spend limit reached", "code": "spend_limit_exceeded"}')
        self.assertEqual(str(caught.exception), "Rate limit exceeded (429): Too many requests")


class RoutingMetadataTests(GlooTestCase):
    def test_auto_routing_metadata(self):
        result = self.client().complete(QUESTION, tradition="evangelical")
        self.assertEqual(result.routing_mechanism, "auto_routing")
        self.assertIn(result.routing_tier, ("tier_1", "tier_2", "tier_3"))
        self.assertTrue(0 <= result.routing_confidence <= 1)
        self.assertEqual(result.tradition, "evangelical")
        self.assertIn(result.model_family, ("OpenAI", "Anthropic", "Google", "Open Source"))
        as_dict = result.to_dict()
        for key in ("provider", "model_family", "routing_mechanism", "routing_tier", "routing_confidence",
                    "tradition", "sources", "sources_returned", "outcome"):
            self.assertIn(key, as_dict)
        json.dumps(as_dict)

    def test_direct_model(self):
        result = self.client().complete("Hi", model="gloo-anthropic-claude-sonnet-4.5")
        self.assertEqual((result.model, result.provider, result.model_family, result.routing_mechanism),
                         ("gloo-anthropic-claude-sonnet-4.5", "anthropic", "Anthropic", "direct_model_selection"))

    def test_usage_when_asked(self):
        result = self.client().complete("Hi", include_usage=True)
        self.assertEqual(self.fake.requests[-1]["body"]["stream_options"], {"include_usage": True})
        self.assertEqual(result.usage["completion_tokens"], result.token_count)
        unasked = self.client().complete("Hi")  # the v2 reference does not list stream_options
        self.assertNotIn("stream_options", self.fake.requests[-1]["body"])
        self.assertIsNone(unasked.usage)

    def test_grounded_streams_ask_for_usage(self):
        result = self.client().complete("Hi", publisher="P")
        self.assertEqual(self.fake.requests[-1]["body"]["stream_options"], {"include_usage": True})
        self.assertIsNotNone(result.usage)
        self.client().complete("Hi", publisher="P", include_usage=False)
        self.assertNotIn("stream_options", self.fake.requests[-1]["body"])


class TutorialCompatibilityTests(GlooTestCase):
    def setUp(self) -> None:
        super().setUp()
        os.environ.update({k: v for k, v in self.fake.env.items() if k != "GLOO_API_KEY"})

    def test_the_tutorials_loop_runs_unchanged(self):
        # The tutorial's code, as written against `requests`.
        token = gloo_stream.ensure_valid_token()
        response = make_streaming_request(QUESTION, token)
        handle_stream_error(response.status_code, "")
        full_text, finish_reason = "", None
        for line in response.iter_lines(decode_unicode=True):
            if not line:
                continue
            chunk = parse_sse_line(line)
            if chunk is None or chunk == "[DONE]":
                continue
            full_text += gloo_stream.extract_token_content(chunk)
            choices = chunk.get("choices") or [{}]
            finish_reason = choices[0].get("finish_reason") or finish_reason
        response.close()
        self.assertIn("resurrection", full_text.lower())
        self.assertEqual(finish_reason, "stop")

    def test_response_surface(self):
        with make_streaming_request("Hi") as response:
            self.assertIsInstance(response, TutorialResponse)
            self.assertEqual((response.status_code, response.status, response.ok), (200, 200, True))
            self.assertTrue(response.headers["content-type"].startswith("text/event-stream"))
            pieces = list(response.iter_content(chunk_size=16))
        self.assertTrue(all(0 < len(piece) <= 16 for piece in pieces))
        self.assertIn(b'"finish_reason":"stop"', b"".join(pieces))

    def test_text_and_json(self):
        response = make_streaming_request("Hi")
        text = response.text
        self.assertIn("data: ", text)
        self.assertEqual(response.text, text)  # read once, kept
        response.close()

    def test_iter_content_decodes_split_characters(self):
        with make_streaming_request("Hi [[split_utf8]]") as response:
            text = "".join(response.iter_content(chunk_size=1, decode_unicode=True))
        self.assertNotIn("\ufffd", text)

    def test_get_access_token_shape(self):
        info = get_access_token()
        self.assertEqual(sorted(info), ["access_token", "expires_at", "expires_in", "token_type"])
        self.assertIn(info["access_token"], self.fake.issued_tokens)
        self.assertEqual(info["token_type"], "Bearer")
        self.assertTrue(3000 < info["expires_in"] <= 3600)
        self.assertAlmostEqual(info["expires_at"], time.time() + info["expires_in"], delta=5)
        self.assertEqual(get_access_token()["access_token"], info["access_token"])  # cached

    def test_iter_lines_ends_lines_at_cr_lf_and_crlf_only(self):
        class Pieces:
            status = 200
            headers: dict = {}

            def __init__(self, pieces):
                self.pieces = list(pieces)

            def read1(self, n):
                return self.pieces.pop(0) if self.pieces else b""

            def close(self):
                pass

        cases = [
            ([b"data: a\r", b"\ndata: b\n\n"], ["data: a", "data: b", ""]),
            ([b"a\rb\r\nc\nd"], ["a", "b", "c", "d"]),
            (["x\x0by\x1cz\u2028".encode() + b"\n"], ["x\x0by\x1cz\u2028"]),  # no splitlines()
            ([b"tail\r"], ["tail"]),
        ]
        for pieces, lines in cases:
            with self.subTest(pieces=pieces):
                response = TutorialResponse(Pieces(pieces))
                self.assertEqual(list(response.iter_lines(decode_unicode=True)), lines)


class StrictSimulatorTests(GlooTestCase):
    """The simulator refuses what Gloo refuses, in Gloo's shapes."""

    def post(self, path, body, token=None):
        token = token or get_token(self.fake)
        return request(self.fake, path, body, {"Authorization": "Bearer " + token})

    def test_enums_ranges_and_types_are_422_with_detail(self):
        user = [{"role": "user", "content": "Hi"}]
        cases = [
            ({"model_family": ["anthropic"]}, ["body", "model_family"], "enum"),  # used to hang up
            ({"model_family": "open_source"}, ["body", "model_family"], "enum"),
            ({"auto_routing": True, "tool_choice": "sometimes"}, ["body", "tool_choice"], "enum"),
            ({"auto_routing": True, "tool_choice": {"type": "function"}}, ["body", "tool_choice"], "enum"),
            ({"auto_routing": True, "temperature": -0.1}, ["body", "temperature"], "greater_than_equal"),
            ({"auto_routing": True, "temperature": "hot"}, ["body", "temperature"], "float_type"),
            ({"auto_routing": True, "max_tokens": 1.5}, ["body", "max_tokens"], "int_type"),
            ({"auto_routing": True, "tradition": ["catholic"]}, ["body", "tradition"], "enum"),
            ({"auto_routing": "yes"}, ["body", "auto_routing"], "bool_type"),
            ({"auto_routing": True, "stream_options": {"include_usage": "yes"}},
             ["body", "stream_options", "include_usage"], "bool_type"),
            ({"model": "gloo-openai-gpt-5-mini", "model_family": "openai"}, ["body"], "value_error"),
        ]
        for fields, loc, kind in cases:
            with self.subTest(fields=fields):
                response = self.post("/ai/v2/chat/completions", dict(fields, messages=user))
                self.assertEqual(response.status, 422)
                detail = response.json()["detail"]
                self.assertEqual((detail[0]["loc"], detail[0]["type"]), (loc, kind))
                self.assertTrue(detail[0]["msg"])

    def test_documented_values_are_accepted(self):
        for fields in ({"model_family": "open source"}, {"auto_routing": True, "tool_choice": "required"},
                       {"model": "gloo-google-gemini-2.5-flash"}, {"auto_routing": True, "temperature": 2},
                       {"auto_routing": True, "tradition": "not_faith_specific", "max_tokens": 1}):
            with self.subTest(fields=fields):
                body = dict(fields, messages=[{"role": "user", "content": "Hi"}])
                self.assertEqual(self.post("/ai/v2/chat/completions", body).status, 200)

    def test_grounded_ranges(self):
        user = [{"role": "user", "content": "Hi"}]
        for limit, status in ((0, 422), (11, 422), (1, 200), (10, 200)):
            with self.subTest(sources_limit=limit):
                response = self.post("/ai/v2/chat/completions/grounded",
                                     {"messages": user, "auto_routing": True, "sources_limit": limit})
                self.assertEqual(response.status, status)
        response = self.post("/ai/v2/chat/completions/grounded", {"messages": user, "auto_routing": True,
                                                                 "rag_publisher": ""})
        self.assertEqual(response.json()["detail"][0]["loc"], ["body", "rag_publisher"])

    def test_grounded_stream_sends_citations_first(self):
        response = self.post("/ai/v2/chat/completions/grounded",
                             {"messages": [{"role": "user", "content": QUESTION}], "auto_routing": True,
                              "stream": True, "sources_limit": 4, "rag_publisher": "GlooGrounded"})
        chunks = response.chunks()
        first = chunks[0]
        self.assertEqual((first["choices"], first["sources_returned"], len(first["citations"])), ([], True, 4))
        self.assertEqual(sorted(first["citations"][0]), ["publisher", "snippet", "title", "url"])
        self.assertTrue(all(c["sources_returned"] for c in chunks))
        self.assertFalse(any("citations" in c for c in chunks[1:]))

    def test_grounded_answer_without_streaming(self):
        response = self.post("/ai/v2/chat/completions/grounded",
                             {"messages": [{"role": "user", "content": "Hi"}], "auto_routing": True,
                              "sources_limit": 2})
        answer = response.json()
        self.assertEqual((answer["object"], answer["sources_returned"], len(answer["citations"])),
                         ("chat.completion", True, 2))
        self.assertIn("routing_mechanism", answer)

    def test_grounded_messages_default(self):
        response = self.post("/ai/v2/chat/completions/grounded", {"auto_routing": True})
        self.assertEqual(response.status, 200)
        self.assertEqual(self.post("/ai/v2/chat/completions/grounded",
                                   {"auto_routing": True, "messages": []}).status, 400)

    def test_unknown_model_is_400_with_gloo_body(self):
        response = self.post("/ai/v2/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                         "model": "gpt-4o"})
        self.assertEqual(response.status, 400)
        self.assertEqual(response.json()["code"], "model_not_found")

    def test_guarded_path_with_a_studio_key(self):
        body = {"messages": [{"role": "user", "content": "Hi"}], "auto_routing": True, "stream": True}
        self.assertEqual(self.post("/ai/v2/guarded/chat/completions", body, token=self.fake.api_key).status, 200)
        response = request(self.fake, "/ai/v2/guarded/chat/completions", body)
        self.assertEqual((response.status, response.json()["code"]), (401, "unauthorized_missing_authorization"))

    def test_usage_only_when_asked(self):
        self.assertFalse(any("usage" in c for c in chat(self.fake, "Hi").chunks()))
        asked = chat(self.fake, "Hi", stream_options={"include_usage": True}).chunks()
        self.assertIn("usage", asked[-1])
        openai = chat(self.fake, "Hi [[openai]]").chunks()
        self.assertEqual(openai[-1]["choices"][0]["finish_reason"], "stop")  # no usage chunk after it

    def test_routing_metadata_on_every_chunk(self):
        for chunk in chat(self.fake, "Hi", model_family="google", tradition="catholic").chunks():
            self.assertEqual((chunk["model_family"], chunk["routing_mechanism"], chunk["tradition"]),
                             ("Google", "model_family", "catholic"))
            self.assertIn("routing_tier", chunk)
            self.assertIn("routing_confidence", chunk)

    def test_error_chunk_has_gloo_internal_code(self):
        last = chat(self.fake, "Hi [[error]]").chunks()[-1]
        self.assertEqual((last["error"]["code"], last["error"]["name"]), (2001, "PROVIDER_TIMEOUT"))

    def test_spend_limit_body(self):
        response = chat(self.fake, "Hi [[spend_limit]]")
        self.assertEqual((response.status, response.json()["code"]), (429, "spend_limit_exceeded"))
        self.assertGreater(int(response.headers["X-RateLimit-Reset"]), time.time())


if __name__ == "__main__":
    unittest.main()
