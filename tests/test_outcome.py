"""One verdict per stream: the same bytes give the same StreamOutcome however the stream is read."""

import json
import socket
import threading
import unittest

import gloo_stream
from gloo_stream import (ChatAccumulator, ChatStream, ConnectionLostError, GlooClient, ProviderError,
                         SSEDecoder, ServerSentEvent, StreamOutcome)


def data(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def content(text: str, **extra) -> bytes:
    return data(dict({"id": "c1", "model": "gloo-test", "choices": [
        {"index": 0, "delta": {"content": text}, "finish_reason": None}]}, **extra))


def finish(reason: str, **extra) -> bytes:
    return data(dict({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}, **extra))


CITATIONS = data({"id": "c1", "object": "chat.completion.chunk", "model": "gloo-test", "choices": [],
                  "sources_returned": True,
                  "citations": [{"title": "On Grace", "url": "https://example.org/grace", "publisher": "Pub",
                                 "snippet": "Grace is..."}]})

# name, body, expected (kind, finish_reason, error_name, error_code, message), expected text
VECTORS = [
    ("finish stop", content("Hel") + content("lo") + finish("stop"),
     ("finished", "stop", "", None, ""), "Hello"),
    ("event error with a message", content("Hel") + b'event: error\ndata: {"error": {"message": '
     b'"provider overloaded", "code": 503}}\n\n',
     ("provider_error", "error", "", 503, "error (503): provider overloaded"), "Hel"),
    ("event error in plain text", content("Hel") + b"event: error\ndata: provider overloaded\n\n",
     ("provider_error", "error", "", None, "error: provider overloaded"), "Hel"),
    ("event error in Gloo's flat shape", content("Hel") + b'event: error\ndata: {"error": "provider overloaded", '
     b'"code": "overloaded"}\n\n',
     ("provider_error", "error", "", "overloaded", "error (overloaded): provider overloaded"), "Hel"),
    ("an error chunk without an event name", content("Hel") + data({"error": "provider overloaded", "code": 503}),
     ("provider_error", "error", "", 503, "error (503): provider overloaded"), "Hel"),
    ("finish_reason error with Gloo's internal code", content("Hel") + finish(
        "error", error={"code": 2001, "name": "PROVIDER_TIMEOUT", "message": "timed out"}),
     ("provider_error", "error", "PROVIDER_TIMEOUT", 2001, "PROVIDER_TIMEOUT (2001): timed out"), "Hel"),
    ("body ends before a finish", content("Hel") + content("lo"),
     ("cut_short", None, "ConnectionLostError", None, "the stream ended before the answer finished"), "Hello"),
    ("[DONE] without a finish_reason", content("Hi") + b"data: [DONE]\n\n",
     ("finished", None, "", None, ""), "Hi"),
    ("content filter", content("Hi") + finish("content_filter"),
     ("finished", "content_filter", "", None, ""), "Hi"),
    ("OpenAI ending: usage after the finish, then [DONE]", content("Hi") + finish("stop") + data(
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
     + b"data: [DONE]\n\n" + content("after done"),
     ("finished", "stop", "", None, ""), "Hi"),
    ("grounded: citations first", CITATIONS + content("Grace") + finish("stop"),
     ("finished", "stop", "", None, ""), "Grace"),
    ("events that are not JSON are skipped", b"data: {not json\n\n" + content("Hi") + b": comment\n\n"
     + finish("length"), ("finished", "length", "", None, ""), "Hi"),
]


class _Body:
    """A response whose body is `body`, read in pieces of `size` bytes."""

    status = 200
    headers = None

    def __init__(self, body: bytes, size: int) -> None:
        self._body, self._size, self.closed = body, size, False

    def read1(self, n: int) -> bytes:
        piece, self._body = self._body[:min(n, self._size)], self._body[min(n, self._size):]
        return piece

    def close(self) -> None:
        self.closed = True


class _BreaksAtEnd(_Body):
    """A body whose connection is reset once its bytes are read, instead of ending cleanly."""

    def read1(self, n: int) -> bytes:
        if not self._body:
            raise ConnectionResetError(104, "reset")
        return super().read1(n)


def _expected(vector) -> tuple:
    return vector[2]


def _summary(outcome: StreamOutcome) -> tuple:
    return (outcome.kind, outcome.finish_reason, outcome.error_name, outcome.error_code, outcome.message)


class OneVerdictTests(unittest.TestCase):
    SIZES = (1, 7, 64 * 1024)

    def read_chunks(self, body, size):
        stream = ChatStream(_Body(body, size))
        raised = None
        try:
            list(stream.chunks())
        except gloo_stream.StreamError as exc:
            raised = exc
        return stream, raised

    def read_batches(self, body, size):
        stream = ChatStream(_Body(body, size))
        while stream.read_batch() is not None:
            pass
        return stream

    def test_chunks_read_batch_and_result_agree(self):
        for name, body, expected, text in VECTORS:
            for size in self.SIZES:
                with self.subTest(name, size=size):
                    by_chunks, raised = self.read_chunks(body, size)
                    by_batches = self.read_batches(body, size)
                    self.assertEqual(_summary(by_chunks.outcome), expected)
                    self.assertEqual(by_batches.outcome, by_chunks.outcome)
                    for stream in (by_chunks, by_batches):
                        result = stream.result()
                        self.assertEqual(result.outcome, stream.outcome)
                        self.assertEqual(result.text, text)
                        self.assertEqual(result.error, expected[4] or None)
                    if expected[0] == "finished":
                        self.assertIsNone(raised)
                    else:
                        self.assertIsInstance(raised, ProviderError if expected[0] == "provider_error"
                                              else ConnectionLostError)
                        self.assertEqual(str(raised), expected[4])
                        self.assertEqual(raised.result.outcome, by_chunks.outcome)

    def test_iteration_and_events_agree(self):
        for name, body, expected, text in VECTORS:
            with self.subTest(name):
                stream = ChatStream(_Body(body, 5))
                deltas = []
                try:
                    for delta in stream:
                        deltas.append(delta)
                except gloo_stream.StreamError:
                    pass
                self.assertEqual("".join(deltas), text)
                self.assertEqual(_summary(stream.outcome), expected)
                events_stream = ChatStream(_Body(body, 5))
                list(events_stream.events())
                self.assertEqual(events_stream.outcome, stream.outcome)

    def test_accumulator_alone_agrees(self):
        for name, body, expected, text in VECTORS:
            with self.subTest(name):
                accumulator = ChatAccumulator()
                decoder = SSEDecoder()
                for event in decoder.feed(body) + decoder.close():
                    accumulator.add_event(event)
                    if accumulator.done:
                        break
                self.assertEqual(_summary(accumulator.outcome(ended=True)), expected)
                self.assertEqual(accumulator.text, text)

    def test_a_provider_error_says_whether_to_retry(self):
        body = content("Hi") + finish("error", error={"code": 3001, "name": "CONTENT_POLICY", "message": "no",
                                                       "retryable": False})
        stream = ChatStream(_Body(body, 1 << 20))
        with self.assertRaises(ProviderError):
            list(stream)
        self.assertEqual((stream.outcome.kind, stream.outcome.retryable), ("provider_error", False))

    def test_outcome_before_the_end_is_streaming(self):
        stream = ChatStream(_Body(content("Hi") + content("there"), 1 << 20))
        self.assertEqual(stream.read_batch() is not None, True)
        self.assertEqual(stream.outcome, StreamOutcome("streaming"))
        self.assertFalse(stream.finished)
        self.assertFalse(stream.outcome.complete)

    def test_finished_and_complete(self):
        stream = ChatStream(_Body(content("Hi") + finish("stop"), 1 << 20))
        stream.read_batch()
        self.assertTrue(stream.finished)
        self.assertTrue(stream.outcome.complete)
        self.assertIsNone(stream.read_batch())  # nothing more came: the stream ends cleanly

    def test_a_transport_failure_after_the_finish_is_no_error(self):
        stream = ChatStream(_BreaksAtEnd(content("Hi") + finish("stop"), 1 << 20))
        self.assertEqual(list(stream), ["Hi"])
        self.assertEqual(stream.outcome.kind, "finished")
        self.assertIsNone(stream.result().error)

    def test_a_transport_failure_before_the_finish_is_cut_short(self):
        stream = ChatStream(_BreaksAtEnd(content("Hi"), 1 << 20))
        with self.assertRaises(ConnectionLostError) as caught:
            list(stream)
        outcome = stream.outcome
        self.assertEqual((outcome.kind, outcome.error_name, outcome.retryable),
                         ("cut_short", "ConnectionLostError", True))
        self.assertEqual(outcome.message, str(caught.exception))
        self.assertEqual(stream.result().error, outcome.message)

    def test_closing_early_is_cut_short_by_the_reader(self):
        stream = ChatStream(_Body(content("Hi") + content(" there") + finish("stop"), 5))
        for _ in stream:
            break
        outcome = stream.outcome
        self.assertEqual((outcome.kind, outcome.error_name, outcome.message),
                         ("cut_short", "closed", "the stream was closed before the answer finished"))
        self.assertTrue(stream.closed)

    def test_closing_after_the_finish_keeps_it_finished(self):
        stream = ChatStream(_Body(content("Hi") + finish("stop") + content("late"), 1 << 20))
        stream.read_batch()
        stream.close()
        self.assertEqual(stream.outcome.kind, "finished")

    def test_sources_and_routing_never_text(self):
        body = CITATIONS + content("Grace", provider="anthropic", model_family="anthropic",
                                   routing_mechanism="auto_routing", routing_tier="tier_2",
                                   routing_confidence=0.87, tradition="evangelical") + finish("stop")
        stream = ChatStream(_Body(body, 9))
        self.assertEqual(list(stream), ["Grace"])
        result = stream.result()
        self.assertEqual((result.text, result.token_count, result.sources_returned), ("Grace", 1, True))
        self.assertEqual(result.sources, [{"title": "On Grace", "url": "https://example.org/grace",
                                           "publisher": "Pub", "snippet": "Grace is..."}])
        self.assertEqual((result.provider, result.model_family, result.routing_mechanism, result.routing_tier,
                          result.routing_confidence, result.tradition),
                         ("anthropic", "anthropic", "auto_routing", "tier_2", 0.87, "evangelical"))
        as_dict = result.to_dict()
        self.assertEqual(as_dict["outcome"]["kind"], "finished")
        self.assertTrue(as_dict["outcome"]["complete"])
        json.dumps(as_dict)

    def test_liberal_source_shapes(self):
        cases = [
            ({"choices": [], "sources": [{"name": "A", "link": "https://a.example"}]}, "A", "https://a.example"),
            ({"choices": [], "citations": [{"title": "B", "uri": "https://b.example"}]}, "B", "https://b.example"),
            ({"choices": [], "citations": ["https://c.example"]}, "https://c.example", "https://c.example"),
        ]
        for chunk, title, url in cases:
            with self.subTest(chunk=chunk):
                accumulator = ChatAccumulator()
                accumulator.add_event(ServerSentEvent("message", json.dumps(chunk), "", None))
                self.assertEqual((accumulator.sources[0]["title"], accumulator.sources[0]["url"]), (title, url))
                self.assertEqual(accumulator.token_count, 0)

    def test_a_caller_adding_chunks_after_read_batch_does_not_count_twice(self):
        stream = ChatStream(_Body(content("Hi") + content(" there") + finish("stop"), 1 << 20))
        batch = stream.read_batch()
        for event in batch:  # what a relay written before read_batch() folded did
            stream.accumulator.add(json.loads(event.data))
        self.assertEqual((stream.accumulator.token_count, stream.text), (2, "Hi there"))

    def test_tap_sees_the_bytes_as_read(self):
        body = content("Hi") + finish("stop")
        seen = []
        stream = ChatStream(_Body(body, 10))
        stream.tap = seen.append
        list(stream)
        self.assertEqual(b"".join(seen), body)
        self.assertEqual(len(seen[0]), 10)

    def test_keep_text_off(self):
        accumulator = ChatAccumulator(keep_text=False)
        accumulator.add_event(ServerSentEvent("message", content("Hi")[6:-2].decode(), "", None))
        self.assertEqual((accumulator.text, accumulator.token_count), ("", 1))

    def test_public_helpers(self):
        gloo_stream._register_secret("s3cr3t-value-xyz")
        self.assertEqual(gloo_stream.redact("a s3cr3t-value-xyz b"), "a [redacted] b")
        self.assertEqual(gloo_stream.describe_provider_error({"name": "PROVIDER_TIMEOUT", "code": 2001,
                                                              "message": "timed out"}),
                         "PROVIDER_TIMEOUT (2001): timed out")
        self.assertEqual(gloo_stream.describe_provider_error({"error": "provider overloaded", "code": "overloaded"}),
                         "error (overloaded): provider overloaded")


class _HoldingServer:
    """Answers one streamed request with `body`, then holds the connection open, silent."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            received = b""
            while b"\r\n\r\n" not in received:
                received += conn.recv(65536)
            head, _, rest = received.partition(b"\r\n\r\n")
            length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")][0])
            while len(rest) < length:
                rest += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            conn.sendall(b"%x\r\n%s\r\n" % (len(self.body), self.body))
            self.release.wait(10)

    def close(self) -> None:
        self.release.set()
        self.thread.join(5)
        self.listener.close()


class FinishGraceTests(unittest.TestCase):
    def serve(self, body):
        server = _HoldingServer(body)
        self.addCleanup(server.close)
        return GlooClient(api_key="test-key-123456", api_url=f"http://127.0.0.1:{server.port}/v2",
                          read_timeout=30, max_retries=0)

    def test_a_finished_answer_held_open_ends_cleanly_after_the_grace(self):
        client = self.serve(content("Hel") + content("lo") + finish("stop"))
        stream = client.stream("Hi")
        stream.finish_grace = 0.2
        self.assertEqual("".join(stream), "Hello")  # (the idle timeout would have been an error, 30 s on)
        result = stream.result()
        self.assertEqual((result.finish_reason, result.error, result.outcome.kind), ("stop", None, "finished"))

    def test_read_batch_ends_cleanly_after_the_grace(self):
        client = self.serve(content("Hi") + finish("stop"))
        stream = client.stream("Hi")
        stream.finish_grace = 0.2
        batches = []
        while True:
            batch = stream.read_batch()
            if batch is None:
                break
            batches.append(batch)
        self.assertEqual(sum(len(b) for b in batches), 2)
        self.assertEqual(stream.grace_remaining(), 0.0)
        self.assertTrue(stream.outcome.complete)
        self.assertTrue(stream.closed)

    def test_complete_returns_a_finished_answer(self):
        client = self.serve(content("Hi") + finish("stop"))
        original = ChatStream.finish_grace
        ChatStream.finish_grace = 0.2
        self.addCleanup(setattr, ChatStream, "finish_grace", original)
        result = client.complete("Hi")
        self.assertEqual((result.text, result.error, result.outcome.kind), ("Hi", None, "finished"))


if __name__ == "__main__":
    unittest.main()
