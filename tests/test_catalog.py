"""The model catalog: parsing what a catalog may look like, prices, fetching and caching, the relay's
/v1/models, and each answer's cost on /api/stream."""

from __future__ import annotations

import http.server
import json
import math
import threading
import unittest
from typing import Any

import fake_gloo
import gloo_stream
from fake_gloo import FakeGloo
from gloo_stream import GlooClient, ModelInfo, parse_model_catalog
from tests.proxy_support import ProxyTestCase, outcome_of
from tests.support import IsolatedTestCase


class ParseTests(unittest.TestCase):
    def test_the_assumed_gloo_shape(self):
        models = parse_model_catalog({"data": [
            {"id": "gloo-x", "name": "X", "family": "openai", "context_window": 400000, "max_output_tokens": 1000,
             "capabilities": ["Chat", "tools", "tools"], "input_per_million": 0.25, "output_per_million": 2}]})
        self.assertEqual(models, [ModelInfo("gloo-x", "X", "openai", 400000, 1000, ("chat", "tools"), 0.25, 2.0)])
        self.assertEqual(models[0].to_dict()["capabilities"], ["chat", "tools"])

    def test_other_spellings_parse_too(self):
        cases = [
            ({"models": [{"model_id": "a", "pricing": {"input": "$1.5", "output": 3}}]}, ("a", 1.5, 3.0)),
            ([{"id": "b", "pricing": {"prompt": "0.000001", "completion": "0.000002"}}], ("b", 1.0, 2.0)),  # per token
            ({"object": "list", "data": [{"id": "c", "object": "model", "owned_by": "acme"}]}, ("c", None, None)),
            (["d"], ("d", None, None)),
        ]
        for document, (model_id, input_price, output_price) in cases:
            with self.subTest(model_id):
                [model] = parse_model_catalog(document)
                self.assertEqual((model.id, model.input_price, model.output_price),
                                 (model_id, input_price, output_price))
        [model] = parse_model_catalog({"data": [{"id": "c", "owned_by": "acme", "context_length": 8192,
                                                 "capabilities": {"vision": True, "tools": False}}]})
        self.assertEqual((model.family, model.context_window, model.capabilities), ("acme", 8192, ("vision",)))

    def test_a_strange_document_never_raises_and_keeps_what_it_can(self):
        for document in (None, 3, "text", {"data": "x"}, {"data": [None, 1, [], {}]}, {"error": "no"}):
            with self.subTest(document=document):
                self.assertEqual(parse_model_catalog(document), [])
        models = parse_model_catalog({"data": [
            {"id": "ok", "pricing": {"input": -1, "output": float("nan")}, "context_window": True},
            {"id": "ok", "name": "second entry with the same id"},
            {"id": "bad\x1b[31m"}, {"id": "   "}, {"id": 5},
            {"id": "named", "name": "\x07bell", "family": "x" * 500},
        ]})
        self.assertEqual([m.id for m in models], ["ok", "named"])
        self.assertEqual((models[0].input_price, models[0].output_price, models[0].context_window), (None, None, None))
        self.assertIsNone(models[1].name)  # a control character: not shown anywhere
        self.assertEqual(len(models[1].family or ""), 200)

    def test_a_huge_catalog_is_cut(self):
        with self.assertLogs("gloo_stream", "WARNING"):
            models = parse_model_catalog({"data": [{"id": f"m{i}"} for i in range(gloo_stream._CATALOG_LIMIT + 5)]})
        self.assertEqual(len(models), gloo_stream._CATALOG_LIMIT)


class CostTests(unittest.TestCase):
    def test_cost_from_chat_and_responses_usage(self):
        model = ModelInfo("m", input_price=0.25, output_price=2.0)
        self.assertTrue(math.isclose(model.cost({"prompt_tokens": 1000, "completion_tokens": 500}), 0.00125))
        self.assertTrue(math.isclose(model.cost({"input_tokens": 4000, "output_tokens": 0}), 0.001))
        self.assertTrue(math.isclose(model.cost({"completion_tokens": 1_000_000}), 2.0))

    def test_no_cost_without_prices_or_usage(self):
        self.assertIsNone(ModelInfo("m").cost({"prompt_tokens": 1, "completion_tokens": 1}))
        priced = ModelInfo("m", input_price=1.0, output_price=1.0)
        for usage in (None, {}, {"total_tokens": 9}, {"prompt_tokens": -3}, {"prompt_tokens": True}, "x"):
            with self.subTest(usage=usage):
                self.assertIsNone(priced.cost(usage))


class UrlTests(IsolatedTestCase):
    def test_where_the_catalog_is(self):
        cases = [
            ({"api_key": "k"}, "https://platform.ai.gloo.com/platform/v2/models"),
            ({"api_key": "k", "endpoint": "guarded"}, "https://platform.ai.gloo.com/platform/v2/models"),
            ({"api_key": "k", "api_url": "http://127.0.0.1:9/v1/chat/completions"}, "http://127.0.0.1:9/v1/models"),
            ({"api_key": "k", "api_url": "http://127.0.0.1:9/ai/v2/chat/completions"},
             "http://127.0.0.1:9/platform/v2/models"),
            ({"api_key": "k", "models_url": "http://127.0.0.1:9/mine"}, "http://127.0.0.1:9/mine"),
        ]
        for options, url in cases:
            with self.subTest(options=options):
                self.assertEqual(GlooClient(**options).models_url, url)

    def test_the_setting_is_checked(self):
        with self.assertRaisesRegex(gloo_stream.ConfigurationError, "GLOO_MODELS_URL"):
            GlooClient(api_key="k", models_url="ftp://example.invalid/models")


class _OpenAIModels:
    """A bare OpenAI-style server: GET /v1/models answers when the bearer is right."""

    def __init__(self, key: str) -> None:
        seen = self.authorizations = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization"))
                ok = self.headers.get("Authorization") == "Bearer " + key
                body = json.dumps({"object": "list", "data": [{"id": "local-model", "object": "model"}]} if ok
                                  else {"error": {"message": "bad key"}}).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FetchTests(IsolatedTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.fake = FakeGloo(delay=0.0)
        self.fake.start()
        self.addCleanup(self.fake.stop)

    def client(self, **options: Any) -> GlooClient:
        return GlooClient(client_id=self.fake.client_id, client_secret=self.fake.client_secret,
                          token_url=self.fake.token_url, api_url=self.fake.api_url, **options)

    def test_gloo_catalog_is_fetched_without_a_token_and_kept(self):
        now = [100.0]
        client = self.client(clock=lambda: now[0], models_ttl=60)
        models = client.models()
        self.assertEqual([m.id for m in models], [m["id"] for m in fake_gloo._CATALOG])
        self.assertEqual(client.model_info("gloo-openai-gpt-5-nano").input_price, 0.05)
        self.assertIsNone(client.model_info("no-such-model"))
        self.assertEqual(len(self.fake.catalog_requests), 1, "kept, not fetched again")
        self.assertNotIn("Authorization", self.fake.catalog_requests[0], "Gloo's catalog is public: no token sent")
        self.assertEqual(self.fake.token_requests, 0)
        client.models(refresh=True)
        now[0] += 61
        client.models()
        self.assertEqual(len(self.fake.catalog_requests), 3)

    def test_every_id_in_the_simulators_catalog_answers(self):
        client = self.client()
        for model in client.models():
            with self.subTest(model=model.id):
                self.assertEqual(client.complete("Hi", model=model.id).model, model.id)

    def test_an_openai_style_server_is_asked_with_the_key(self):
        server = _OpenAIModels("local-key-0123")
        self.addCleanup(server.close)
        client = GlooClient(api_key="local-key-0123", api_url=server.url + "/chat/completions")
        self.assertEqual([m.id for m in client.models()], ["local-model"])
        self.assertEqual(server.authorizations, ["Bearer local-key-0123"])
        wrong = GlooClient(api_key="wrong-key-0123", api_url=server.url + "/chat/completions")
        with self.assertRaises(gloo_stream.AuthenticationError) as caught:
            wrong.models()
        self.assertNotIn("wrong-key-0123", str(caught.exception))

    def test_an_unreachable_catalog_is_an_error_and_model_info_says_none(self):
        client = GlooClient(api_key="k", models_url="http://127.0.0.1:9/platform/v2/models", connect_timeout=2)
        with self.assertRaises(gloo_stream.APIConnectionError):
            client.models()
        with self.assertLogs("gloo_stream", "WARNING") as logs:
            self.assertIsNone(client.model_info("gloo-openai-gpt-5-mini"))
        self.assertIn("model catalog unavailable", logs.output[0])


class RelayCatalogTests(ProxyTestCase):
    def test_models_lists_auto_then_the_catalog(self):
        status, headers, body = self.request("GET", "/v1/models")
        self.assertEqual(status, 200)
        self.assertNotIn("x-gloo-catalog", headers)
        data = json.loads(body)["data"]
        self.assertEqual([m["id"] for m in data], ["auto"] + [m["id"] for m in fake_gloo._CATALOG])
        nano = next(m for m in data if m["id"] == "gloo-openai-gpt-5-nano")
        self.assertEqual(nano["pricing"], {"input": 0.05, "output": 0.4, "unit": "USD per 1M tokens"})
        self.assertEqual((nano["object"], nano["owned_by"], nano["context_window"]), ("model", "openai", 400000))

    def test_one_model(self):
        status, _, body = self.request("GET", "/v1/models/gloo-anthropic-claude-haiku-4.5")
        self.assertEqual((status, json.loads(body)["name"]), (200, "Claude Haiku 4.5"))
        self.assertEqual(json.loads(self.request("GET", "/v1/models/auto")[2])["id"], "auto")
        status, _, body = self.request("GET", "/v1/models/gpt-unknown")
        error = json.loads(body)["error"]
        self.assertEqual((status, error["code"]), (404, "model_not_found"))
        self.assertIn("GET /v1/models lists them", error["message"])
        self.assertEqual(self.request("POST", "/v1/models/auto", {})[0], 405)

    def test_without_a_catalog_only_auto_is_listed_and_it_says_so(self):
        proxy = self.start_proxy(models_url="http://127.0.0.1:9/platform/v2/models")
        status, headers, body = self.request("GET", "/v1/models", proxy=proxy)
        self.assertEqual((status, headers.get("x-gloo-catalog")), (200, "unavailable"))
        self.assertEqual([m["id"] for m in json.loads(body)["data"]], ["auto"])
        status, _, body = self.request("GET", "/v1/models/gloo-openai-gpt-5-mini", proxy=proxy)
        self.assertEqual(status, 404)
        self.assertIn("no catalog now", json.loads(body)["error"]["message"])
        self.assertTrue(self.logs.wait_for("model catalog unavailable"))

    def test_the_outcome_event_carries_usage_and_the_catalogs_cost(self):
        self.request("GET", "/v1/models")  # the catalog is in
        status, _, body = self.request("POST", "/api/stream", {
            "messages": [{"role": "user", "content": "What is hope?"}], "model": "gloo-openai-gpt-5-nano"})
        self.assertEqual(status, 200)
        verdict = outcome_of(body.decode())
        self.assertEqual((verdict["kind"], verdict["complete"], verdict["model"]),
                         ("finished", True, "gloo-openai-gpt-5-nano"))
        self.assertEqual(self.fake.requests[-1]["body"]["stream_options"], {"include_usage": True})
        usage = verdict["usage"]
        self.assertGreater(usage["completion_tokens"], 0)
        expected = (usage["prompt_tokens"] * 0.05 + usage["completion_tokens"] * 0.4) / 1_000_000
        self.assertTrue(math.isclose(verdict["cost_usd"], expected), (verdict["cost_usd"], expected))


if __name__ == "__main__":
    unittest.main()
