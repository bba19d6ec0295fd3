"""The Responses API: the library's ResponseStream on whole event streams at every split, and
against the simulator (text, tools, reasoning, images, failures), with the same verdict vocabulary
as chat streams."""

from __future__ import annotations

import base64
import json
import unittest

import gloo_stream
from fake_gloo import FakeGloo
from gloo_stream import ConfigurationError, GlooClient, ResponseStream, StreamOutcome
from tests.support import IsolatedTestCase


def event(kind: str, number: int | None = None, *, name: bool = True, **fields) -> bytes:
    """One typed event, as the Responses API sends it: `event:` equal to the data's type."""
    data = {"type": kind, **fields}
    if number is not None:
        data["sequence_number"] = number
    head = b"event: " + kind.encode() + b"\n" if name else b""
    return head + b"data: " + json.dumps(data).encode() + b"\n\n"


def numbered(*pieces: tuple) -> bytes:
    """Events numbered from 0 in order: each piece is (kind, fields)."""
    return b"".join(event(kind, number, **fields) for number, (kind, fields) in enumerate(pieces))


RESPONSE = {"id": "resp_1", "object": "response", "model": "gloo-openai-gpt-5", "status": "in_progress",
            "output": [], "provider": "openai", "model_family": "OpenAI"}
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
USAGE = {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}


def final(kind: str, status: str, output: list, **extra) -> tuple:
    return (kind, {"response": dict(RESPONSE, status=status, output=output, usage=USAGE, **extra)})


def text_items(*deltas: str) -> list[tuple]:
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    return ([("response.output_item.added", {"output_index": 0, "item": MESSAGE}),
             ("response.content_part.added", dict(where, part={"type": "output_text", "text": ""}))]
            + [("response.output_text.delta", dict(where, delta=d)) for d in deltas])


DONE_MESSAGE = dict(MESSAGE, status="completed", content=[{"type": "output_text", "text": "Hello"}])
CALL = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "lookup_verse", "arguments": ""}
START = [("response.created", {"response": RESPONSE}), ("response.in_progress", {"response": RESPONSE})]

# name, body, (kind, finish_reason, error_name, message), text, extra checks on the result
VECTORS = [
    ("text", numbered(*START, *text_items("Hel", "lo"), ("response.output_text.done", {"text": "Hello"}),
                      ("response.output_item.done", {"output_index": 0, "item": DONE_MESSAGE}),
                      final("response.completed", "completed", [DONE_MESSAGE])),
     ("finished", "completed", "", ""), "Hello", {"status": "completed", "usage": USAGE, "provider": "openai"}),
    ("tool call", numbered(*START, ("response.output_item.added", {"output_index": 0, "item": CALL}),
                           *[("response.function_call_arguments.delta", {"output_index": 0, "delta": piece})
                             for piece in ('{"refer', 'ence": "Jo', 'hn 3:16"}')],
                           ("response.function_call_arguments.done", {"output_index": 0,
                                                                      "arguments": '{"reference": "John 3:16"}'}),
                           final("response.completed", "completed", [])),
     ("finished", "completed", "", ""), "",
     {"function_calls": [{"id": "fc_1", "call_id": "call_1", "name": "lookup_verse",
                          "arguments": '{"reference": "John 3:16"}'}]}),
    ("reasoning summary", numbered(*START, ("response.output_item.added", {"output_index": 0, "item": {
        "id": "rs_1", "type": "reasoning", "summary": []}}),
        *[("response.reasoning_summary_text.delta", {"output_index": 0, "summary_index": 0, "delta": d})
          for d in ("Think", "ing.")],
        *[(kind, dict(fields, output_index=1) if "output_index" in fields else fields)
          for kind, fields in text_items("Hi")],
        final("response.completed", "completed", [])),
     ("finished", "completed", "", ""), "Hi", {"reasoning": "Thinking."}),
    ("generated image", numbered(*START, ("response.output_item.added", {"output_index": 0, "item": {
        "id": "ig_1", "type": "image_generation_call", "status": "in_progress"}}),
        ("response.output_item.done", {"output_index": 0, "item": {
            "id": "ig_1", "type": "image_generation_call", "status": "completed", "result": "iVBORw0KGgo="}}),
        final("response.completed", "completed", [])),
     ("finished", "completed", "", ""), "", {"images": [{"id": "ig_1", "type": "image_generation_call",
                                                         "status": "completed", "result": "iVBORw0KGgo="}]}),
    ("failed", numbered(*START, *text_items("Hel"), final(
        "response.failed", "failed", [], error={"code": "server_error", "message": "timed out"})),
     ("provider_error", "error", "server_error", "server_error: timed out"), "Hel", {"status": "failed"}),
    ("error event", numbered(*START, *text_items("Hel"), ("error", {"code": "rate_limit_exceeded",
                                                                   "message": "slow down", "param": None})),
     ("provider_error", "error", "rate_limit_exceeded", "rate_limit_exceeded: slow down"), "Hel", {}),
    ("incomplete", numbered(*START, *text_items("Hel"), final(
        "response.incomplete", "incomplete", [], incomplete_details={"reason": "max_output_tokens"})),
     ("finished", "max_output_tokens", "", ""), "Hel", {"incomplete_reason": "max_output_tokens"}),
    ("cut short: no final event", numbered(*START, *text_items("Hel", "lo")),
     ("cut_short", None, "ConnectionLostError", "the stream ended before the response completed"), "Hello", {}),
    ("unknown event types are kept and never break the stream",
     numbered(*START, ("response.future_feature", {"anything": [1, 2]}), *text_items("Hi"),
              final("response.completed", "completed", [])),
     ("finished", "completed", "", ""), "Hi", {}),
    ("the SSE event name stands in for a missing type",
     event("response.created", 0, response=RESPONSE) + b"event: response.output_text.delta\ndata: "
     + json.dumps({"delta": "Hi", "output_index": 0, "sequence_number": 1}).encode() + b"\n\n"
     + event("response.completed", 2, response=dict(RESPONSE, status="completed")),
     ("finished", "completed", "", ""), "Hi", {}),
    ("events after the final one are not the answer's",
     numbered(*START, *text_items("Hi"), final("response.completed", "completed", []),
              ("response.output_text.delta", {"output_index": 0, "delta": " more"})),
     ("finished", "completed", "", ""), "Hi", {}),
    ("a sequence gap is noticed", event("response.created", 0, response=RESPONSE)
     + event("response.output_text.delta", 1, output_index=0, delta="Hi")
     + event("response.completed", 5, response=dict(RESPONSE, status="completed")),
     ("finished", "completed", "", ""), "Hi", {"sequence_gaps": 1}),
    ("malformed data is skipped", numbered(*START) + b"event: response.output_text.delta\ndata: {not json\n\n"
     + event("response.output_text.delta", 2, output_index=0, delta="Hi")
     + event("response.completed", 3, response=dict(RESPONSE, status="completed")),
     ("finished", "completed", "", ""), "Hi", {}),
]


class _Body:
    status = 200
    headers = None

    def __init__(self, body: bytes, size: int) -> None:
        self._body, self._size = body, size

    def read1(self, n: int) -> bytes:
        piece, self._body = self._body[:min(n, self._size)], self._body[min(n, self._size):]
        return piece

    def close(self) -> None:
        pass


def _summary(outcome: StreamOutcome) -> tuple:
    return outcome.kind, outcome.finish_reason, outcome.error_name, outcome.message


class ResponseVectorTests(unittest.TestCase):
    SIZES = (1, 2, 3, 7, 64, 64 * 1024)

    def read(self, body: bytes, size: int, how: str) -> tuple[ResponseStream, list[str], list[dict]]:
        stream = ResponseStream(_Body(body, size))
        deltas: list[str] = []
        typed: list[dict] = []
        try:
            if how == "deltas":
                for delta in stream:
                    deltas.append(delta)
            elif how == "events":
                typed = list(stream.events())
            else:
                while stream.read_batch() is not None:
                    pass
        except gloo_stream.StreamError:
            pass
        return stream, deltas, typed

    def test_every_vector_at_every_split_gives_one_verdict(self):
        for name, body, expected, text, extra in VECTORS:
            splits = self.SIZES if len(body) < 4000 else (1, 64 * 1024)
            for size in splits:
                for how in ("deltas", "events", "batches"):
                    with self.subTest(name, size=size, how=how):
                        stream, deltas, _ = self.read(body, size, how)
                        result = stream.result()
                        self.assertEqual(_summary(stream.outcome), expected)
                        self.assertEqual(result.outcome, stream.outcome)
                        self.assertEqual(result.text, text)
                        if how == "deltas":
                            self.assertEqual("".join(deltas), text)
                        for key, value in extra.items():
                            self.assertEqual(getattr(result, key), value, key)
                        json.dumps(result.to_dict())  # JSON-ready whatever it holds

    def test_events_yields_every_typed_event_in_order(self):
        body = VECTORS[8][1]  # with an unknown event type
        _, _, typed = self.read(body, 5, "events")
        self.assertEqual([e["type"] for e in typed][:3],
                         ["response.created", "response.in_progress", "response.future_feature"])
        self.assertEqual([e["sequence_number"] for e in typed], list(range(len(typed))))

    def test_a_huge_function_call_argument_is_joined_in_linear_time(self):
        pieces = ["x" * 10] * 20000
        body = numbered(*START, ("response.output_item.added", {"output_index": 0, "item": CALL}),
                        *[("response.function_call_arguments.delta", {"output_index": 0, "delta": p})
                          for p in pieces], final("response.completed", "completed", []))
        stream, _, _ = self.read(body, 64 * 1024, "batches")
        self.assertEqual(stream.result().function_calls[0]["arguments"], "x" * 200000)


class ResponsePayloadTests(IsolatedTestCase):
    def client(self, **options) -> GlooClient:
        return GlooClient(api_key="responses-test-key", **options)

    def test_the_responses_url_sits_beside_the_completions_url(self):
        cases = [("https://platform.ai.gloo.com/ai/v2/chat/completions", "https://platform.ai.gloo.com/ai/v1/responses"),
                 ("https://platform.ai.gloo.com/ai/v2/guarded/chat/completions",
                  "https://platform.ai.gloo.com/ai/v1/responses"),
                 ("http://127.0.0.1:8000/v1/chat/completions", "http://127.0.0.1:8000/v1/responses"),
                 ("http://127.0.0.1:8000/api/chat", "http://127.0.0.1:8000/ai/v1/responses")]
        for api_url, expected in cases:
            with self.subTest(api_url):
                self.assertEqual(self.client(api_url=api_url).responses_url, expected)
        self.assertEqual(self.client(responses_url="http://127.0.0.1:9/r").responses_url, "http://127.0.0.1:9/r")

    def test_a_model_is_required_and_fields_pass_through(self):
        client = self.client()
        with self.assertRaises(ConfigurationError) as caught:
            client.build_response_payload("Hi")
        self.assertIn("needs a model", str(caught.exception))
        payload = client.build_response_payload(
            [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}], instructions="Be brief",
            model="gloo-openai-gpt-5-mini", max_output_tokens=50, reasoning={"effort": "low"}, temperature=None,
            previous_response_id="resp_0", metadata={"k": "v"}, text={"format": {"type": "text"}})
        self.assertEqual(payload, {"input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
                                   "instructions": "Be brief", "model": "gloo-openai-gpt-5-mini",
                                   "max_output_tokens": 50, "reasoning": {"effort": "low"},
                                   "previous_response_id": "resp_0", "metadata": {"k": "v"},
                                   "text": {"format": {"type": "text"}}, "stream": True})
        with self.assertRaises(ConfigurationError):
            client.build_response_payload(42, model="m")  # type: ignore[arg-type]


class SimulatorResponsesTests(IsolatedTestCase):
    MODEL = "gloo-openai-gpt-5-mini"

    def setUp(self) -> None:
        super().setUp()
        self.fake = FakeGloo().start()
        self.addCleanup(self.fake.stop)
        self.client = GlooClient(client_id=self.fake.client_id, client_secret=self.fake.client_secret,
                                 token_url=self.fake.token_url, api_url=self.fake.api_url, max_retries=0)
        self.addCleanup(self.client.close)

    def test_a_text_answer_streams_typed_numbered_events(self):
        with self.client.stream_response("What is discipleship?", model=self.MODEL) as stream:
            typed = list(stream.events())
        kinds = [e["type"] for e in typed]
        self.assertEqual(kinds[:5], ["response.created", "response.in_progress", "response.output_item.added",
                                     "response.content_part.added", "response.output_text.delta"])
        self.assertEqual(kinds[-4:], ["response.output_text.done", "response.content_part.done",
                                      "response.output_item.done", "response.completed"])
        self.assertEqual([e["sequence_number"] for e in typed], list(range(len(typed))))
        result = stream.result()
        self.assertIn("disciple", result.text.lower())
        self.assertEqual(result.output[-1]["content"][0]["text"], result.text)
        self.assertEqual((result.status, result.model, result.outcome.kind), ("completed", self.MODEL, "finished"))
        self.assertEqual(result.usage["output_tokens"], result.token_count)
        self.assertEqual(self.fake.requests[-1]["path"], "/ai/v1/responses")

    def test_respond_without_streaming_the_deltas(self):
        seen: list[str] = []
        result = self.client.respond("Hi", model=self.MODEL, instructions="Be brief", on_delta=seen.append)
        self.assertEqual("".join(seen), result.text)
        self.assertEqual(self.fake.requests[-1]["body"]["instructions"], "Be brief")

    def test_a_reasoning_model_sends_its_summary_first(self):
        result = self.client.respond("Hi", model="gloo-openai-gpt-5")
        self.assertEqual([item["type"] for item in result.output], ["reasoning", "message"])
        self.assertTrue(result.reasoning.startswith("The question asks"))

    def test_a_tool_round_trip_finishes(self):
        tools = [{"type": "function", "name": "lookup_verse", "parameters": {
            "type": "object", "properties": {"reference": {"type": "string"},
                                             "translation": {"type": "string", "enum": ["ESV", "NIV"]}},
            "required": ["reference", "translation"]}},
            {"type": "function", "name": "other", "parameters": {"type": "object", "properties": {}}}]
        first = self.client.respond("Find John 3:16", model=self.MODEL, tools=tools)
        self.assertEqual(len(first.function_calls), 1)
        call = first.function_calls[0]
        self.assertEqual((call["name"], json.loads(call["arguments"])),
                         ("lookup_verse", {"reference": "John 11:25", "translation": "ESV"}))
        named = self.client.respond("Find it", model=self.MODEL, tools=tools,
                                    tool_choice={"type": "function", "name": "other"})
        self.assertEqual(named.function_calls[0]["name"], "other")
        self.assertEqual(self.client.respond("Find it", model=self.MODEL, tools=tools, tool_choice="none")
                         .function_calls, [])
        second = self.client.respond(
            [{"role": "user", "content": "Find John 3:16"}, {"type": "function_call", **{
                k: call[k] for k in ("call_id", "name", "arguments")}},
             {"type": "function_call_output", "call_id": call["call_id"], "output": "For God so loved the world"}],
            model=self.MODEL, tools=tools)
        self.assertEqual(second.function_calls, [])
        self.assertIn("For God so loved the world", second.text)

    def test_structured_output_fits_the_schema(self):
        schema = {"type": "object", "properties": {"reference": {"type": "string"}, "verses": {"type": "integer"}},
                  "required": ["reference", "verses"]}
        result = self.client.respond("John 3:16", model=self.MODEL, text={"format": {
            "type": "json_schema", "name": "verse", "schema": schema}})
        self.assertEqual(json.loads(result.text), {"reference": "John 11:25", "verses": 3})

    def test_an_image_tool_returns_a_real_png(self):
        result = self.client.respond("Draw a cross", model=self.MODEL, tools=[{"type": "image_generation"}])
        png = base64.b64decode(result.images[0]["result"])
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(png[12:16], b"IHDR")

    def test_an_input_image_is_seen(self):
        png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 92).decode()
        result = self.client.respond([{"role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64," + png}]}], model=self.MODEL)
        self.assertIn("I see an image (image/png, 100 bytes).", result.text)

    def test_failures_mid_stream_keep_the_partial_text(self):
        cases = [("[[error]]", "provider_error", "server_error: The model provider timed out"),
                 ("[[error_event]]", "provider_error", "server_error: The model provider timed out"),
                 ("[[drop]]", "cut_short", "the stream ended before the response completed"),
                 ("[[content_filter]]", "finished", "")]
        for marker, kind, message in cases:
            with self.subTest(marker):
                result = self.client.respond("Hi " + marker, model=self.MODEL)
                self.assertEqual((result.outcome.kind, result.outcome.message), (kind, message))
                self.assertEqual(result.token_count, 3)  # the partial text kept
        result = self.client.respond("Hi", model=self.MODEL, max_output_tokens=2)
        self.assertEqual((result.outcome.finish_reason, result.status, result.token_count),
                         ("max_output_tokens", "incomplete", 2))

    def test_a_stored_response_can_be_retrieved_by_its_id(self):
        result = self.client.respond("Hi", model=self.MODEL)
        stored = self.client.retrieve_response(result.id)
        self.assertEqual((stored["id"], stored["status"]), (result.id, "completed"))
        self.assertEqual(stored["output"][-1]["content"][0]["text"], result.text)
        unkept = self.client.respond("Hi", model=self.MODEL, store=False)
        with self.assertRaises(gloo_stream.NotFoundError):
            self.client.retrieve_response(unkept.id)
        with self.assertRaises(ConfigurationError):
            self.client.retrieve_response("../token")

    def test_errors_before_the_stream_are_typed(self):
        with self.assertRaises(gloo_stream.BadRequestError) as caught:
            self.client.respond("Hi", model="no-such-model")
        self.assertIn("unknown model 'no-such-model'", str(caught.exception))
        with self.assertRaises(gloo_stream.UnprocessableEntityError):
            self.client.stream_response_payload({"model": self.MODEL})  # no input
        with self.assertRaises(gloo_stream.RateLimitError):
            self.client.respond("Hi [[status:429]]", model=self.MODEL)


if __name__ == "__main__":
    unittest.main()
