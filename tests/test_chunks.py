"""Chat chunks: extracting content and accumulating a whole answer."""

from __future__ import annotations

import random
import json
import unittest

import gloo_stream
from gloo_stream import ChatAccumulator, extract_token_content
from tests.support import chunk


class FakeClock:
    def __init__(self, start=100.0):
        self.now = start

    def __call__(self):
        return self.now


class ExtractTests(unittest.TestCase):
    CASES = [
        ("content", chunk("Hello"), "Hello"),
        ("empty content", chunk(""), ""),
        ("no content key", chunk(), ""),
        ("content null", {"choices": [{"delta": {"content": None}}]}, ""),
        ("content not a string", {"choices": [{"delta": {"content": 5}}]}, ""),
        ("delta not a dict", {"choices": [{"delta": "x"}]}, ""),
        ("choices empty (usage chunk)", {"choices": [], "usage": {"total_tokens": 3}}, ""),
        ("choices not a list", {"choices": {"0": {}}}, ""),
        ("choice not a dict", {"choices": ["x"]}, ""),
        ("no choices", {"id": "x"}, ""),
        ("chunk is a list", [1, 2], ""),
        ("chunk is None", None, ""),
        ("chunk is a string", "data: x", ""),
        ("chunk is a number", 3.5, ""),
    ]

    def test_cases(self):
        for name, value, expected in self.CASES:
            with self.subTest(name):
                self.assertEqual(extract_token_content(value), expected)


class AccumulatorTests(unittest.TestCase):
    def test_joins_content_and_counts_content_chunks(self):
        acc = ChatAccumulator()
        for piece in [None, "The", " resurrection", "", " matters", "."]:
            acc.add(chunk(piece))
        acc.add(chunk(finish="stop"))
        self.assertEqual(acc.text, "The resurrection matters.")
        self.assertEqual(acc.token_count, 4)
        self.assertEqual(acc.finish_reason, "stop")

    def test_add_returns_the_content(self):
        acc = ChatAccumulator()
        self.assertEqual(acc.add(chunk("Hi")), "Hi")
        self.assertEqual(acc.add(chunk()), "")

    def test_keeps_model_id_provider(self):
        acc = ChatAccumulator()
        acc.add(chunk("a", provider="openai", model="gloo-openai-gpt-5-mini", id="chatcmpl-9"))
        self.assertEqual((acc.model, acc.id, acc.provider), ("gloo-openai-gpt-5-mini", "chatcmpl-9", "openai"))

    def test_usage_after_finish_chunk_is_kept(self):
        acc = ChatAccumulator()
        acc.add(chunk("a"))
        acc.add(chunk(finish="stop"))
        acc.add({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1,
                                                               "total_tokens": 6}})
        self.assertEqual(acc.finish_reason, "stop")
        self.assertEqual(acc.usage, {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6})

    def test_first_token_time(self):
        clock = FakeClock(100.0)
        acc = ChatAccumulator(clock=clock)
        clock.now = 100.2
        acc.add(chunk(None))  # role chunk, no content
        clock.now = 100.35
        acc.add(chunk("a"))
        clock.now = 101.0
        acc.add(chunk("b"))
        self.assertEqual(acc.ttft_ms, 350)
        self.assertEqual(acc.result().duration_ms, 1000)

    def test_server_ttft_kept(self):
        acc = ChatAccumulator()
        acc.add(chunk("a", ttft_ms=412))
        self.assertEqual(acc.server_ttft_ms, 412)

    def test_tool_calls_merge_by_index(self):
        acc = ChatAccumulator()
        deltas = [
            [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "lookup_verse", "arguments": ""}}],
            [{"index": 0, "function": {"arguments": '{"ref": '}}],
            [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "define", "arguments": "{"}}],
            [{"index": 0, "function": {"arguments": '"John 3:16"}'}}],
            [{"index": 1, "function": {"arguments": '"word": "grace"}'}}],
        ]
        for calls in deltas:
            acc.add({"choices": [{"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None}]})
        acc.add(chunk(finish="tool_calls"))
        self.assertEqual(acc.tool_calls, [
            {"index": 0, "id": "call_a", "type": "function",
             "function": {"name": "lookup_verse", "arguments": '{"ref": "John 3:16"}'}},
            {"index": 1, "id": "call_b", "type": "function",
             "function": {"name": "define", "arguments": '{"word": "grace"}'}},
        ])
        self.assertEqual(acc.finish_reason, "tool_calls")
        self.assertEqual(acc.token_count, 0)

    def test_tool_call_arguments_read_mid_stream_then_extended(self):
        acc = ChatAccumulator()
        call = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "ab"}}]}}]}
        acc.add(call)
        self.assertEqual(acc.tool_calls[0]["function"]["arguments"], "ab")
        acc.add(call)
        acc.add(call)
        self.assertEqual(acc.tool_calls[0]["function"]["arguments"], "ababab")
        self.assertEqual(acc.result().tool_calls[0]["function"]["arguments"], "ababab")

    def test_tool_call_indexes_are_capped_and_negative_ones_ignored(self):
        acc = ChatAccumulator()
        with self.assertLogs("gloo_stream", "WARNING") as logs:
            for index in [-1, *range(gloo_stream.MAX_TOOL_CALLS + 50)]:
                acc.add({"choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": index, "function": {"name": f"f{index}", "arguments": "{}"}}]}}]})
        self.assertEqual([call["index"] for call in acc.tool_calls], list(range(gloo_stream.MAX_TOOL_CALLS)))
        self.assertEqual(len(logs.records), 1)  # said once, not once per ignored call

    def test_error_object_top_level(self):
        acc = ChatAccumulator()
        acc.add(chunk("partial"))
        acc.add(chunk(finish="error", error={"code": 2001, "name": "PROVIDER_TIMEOUT", "message": "timed out"}))
        self.assertEqual(acc.error, {"code": 2001, "name": "PROVIDER_TIMEOUT", "message": "timed out"})
        result = acc.result()
        self.assertEqual(result.error, "PROVIDER_TIMEOUT (2001): timed out")
        self.assertEqual((result.text, result.finish_reason), ("partial", "error"))

    def test_error_object_inside_choice(self):
        acc = ChatAccumulator()
        acc.add({"choices": [{"index": 0, "delta": {}, "finish_reason": "error",
                              "error": {"code": 504, "name": "PROVIDER_TIMEOUT", "message": "slow"}}]})
        self.assertEqual(acc.error["name"], "PROVIDER_TIMEOUT")

    def test_result_defaults(self):
        result = ChatAccumulator().result()
        self.assertEqual((result.text, result.token_count, result.finish_reason, result.ttft_ms, result.error),
                         ("", 0, "unknown", None, None))
        self.assertEqual(sorted(result.to_dict()), sorted([
            "text", "token_count", "duration_ms", "finish_reason", "ttft_ms", "model", "usage", "tool_calls",
            "error", "id", "provider", "sources", "sources_returned", "sources_dropped", "model_family",
            "routing_mechanism", "routing_tier", "routing_confidence", "tradition", "outcome", "parsed"]))

    def test_random_chunks_never_raise(self):
        rng = random.Random(11)
        values = [None, 0, 1.5, True, "", "x", [], {}, [None], {"a": 1}, -1, "stop", [{"index": "0"}]]

        def rand_value(depth=0):
            if depth > 3 or rng.random() < 0.4:
                return rng.choice(values)
            keys = ["choices", "delta", "content", "finish_reason", "tool_calls", "index", "function", "arguments",
                    "name", "id", "type", "usage", "model", "error", "ttft_ms", "provider", "code", "message"]
            if rng.random() < 0.3:
                return [rand_value(depth + 1) for _ in range(rng.randint(0, 3))]
            return {rng.choice(keys): rand_value(depth + 1) for _ in range(rng.randint(0, 4))}

        for _ in range(2000):
            acc = ChatAccumulator()
            for _ in range(5):
                value = rand_value()
                acc.add(value)
                self.assertIsInstance(extract_token_content(value), str)
            result = acc.result()
            self.assertIsInstance(result.text, str)
            self.assertIsInstance(result.to_dict(), dict)


if __name__ == "__main__":
    unittest.main()


class SourceCapTests(unittest.TestCase):
    """#19.8: endless citation lists cost nothing beyond the cap; what was dropped is counted."""

    def test_sources_are_capped_and_counted(self):
        from gloo_stream import MAX_SOURCES, ChatAccumulator, ServerSentEvent

        accumulator = ChatAccumulator(keep_text=False)
        batch = json.dumps({"choices": [], "citations": [{"title": f"S{i}", "url": f"https://s.example/{i}"}
                                                         for i in range(40)]})
        for _ in range(100):
            accumulator.add_event(ServerSentEvent("message", batch, "", None))
        result = accumulator.result()
        self.assertEqual((len(result.sources), result.sources_dropped), (MAX_SOURCES, 4000 - MAX_SOURCES))
        self.assertEqual(result.to_dict()["sources_dropped"], 4000 - MAX_SOURCES)
        small = ChatAccumulator(max_sources=2)
        small.add_event(ServerSentEvent("message", batch, "", None))
        self.assertEqual([s["title"] for s in small.sources], ["S0", "S1"])
