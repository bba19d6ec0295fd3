"""The SSE decoder against the WHATWG "interpreting an event stream" rules, at every split."""

from __future__ import annotations

import random
import unittest

import gloo_stream
from gloo_stream import EventTooLargeError, ServerSentEvent, SSEDecoder

E = ServerSentEvent


def decode_whole(data: bytes) -> list:
    decoder = SSEDecoder()
    return decoder.feed(data) + decoder.close()


def decode_bytewise(data: bytes) -> list:
    decoder = SSEDecoder()
    events = []
    for i in range(len(data)):
        events += decoder.feed(data[i : i + 1])
    return events + decoder.close()


def decode_random(data: bytes, rng: random.Random) -> list:
    decoder = SSEDecoder()
    events = []
    i = 0
    while i < len(data):
        step = rng.randint(1, 7)
        events += decoder.feed(data[i : i + step])
        i += step
    return events + decoder.close()


# (name, stream bytes, expected events): each rule of the spec, and its examples.
VECTORS = [
    ("spec example: stock ticker", b"data: YHOO\ndata: +2\ndata: 10\n\n", [E("message", "YHOO\n+2\n10")]),
    (
        "spec example: comment, ids and no id",
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
        [E("message", "first event", "1"), E("message", "second event", ""), E("message", " third event", "")],
    ),
    ("spec example: empty data lines still dispatch", b"data\n\ndata\ndata\n\ndata:\n",
     [E("message", ""), E("message", "\n")]),
    ("spec example: a space after the colon is optional", b"data:test\n\ndata: test\n\n",
     [E("message", "test"), E("message", "test")]),
    ("LF line ends", b"data: a\n\n", [E("message", "a")]),
    ("CRLF line ends", b"data: a\r\n\r\n", [E("message", "a")]),
    ("CR line ends", b"data: a\r\rdata: b\r\r", [E("message", "a"), E("message", "b")]),
    ("mixed line ends", b"data: a\rdata: b\r\ndata: c\n\r\n", [E("message", "a\nb\nc")]),
    ("leading BOM stripped", b"\xef\xbb\xbfdata: a\n\n", [E("message", "a")]),
    ("only one leading BOM stripped", b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n", []),
    ("a BOM later in the stream is data", b"data: a\n\ndata: \xef\xbb\xbfb\n\n",
     [E("message", "a"), E("message", "\ufeffb")]),
    ("comments ignored", b": hello\ndata: a\n: keep-alive\n\n", [E("message", "a")]),
    ("field split at the first colon", b"data: a: b: c\n\n", [E("message", "a: b: c")]),
    ("only one leading space removed", b"data:   x\n\n", [E("message", "  x")]),
    ("a field with no colon has an empty value", b"data\n\n", [E("message", "")]),
    ("event type", b"event: update\ndata: a\n\n", [E("update", "a")]),
    ("event type resets after dispatch", b"event: update\ndata: a\n\ndata: b\n\n",
     [E("update", "a"), E("message", "b")]),
    ("empty event type means message", b"event:\ndata: a\n\n", [E("message", "a")]),
    ("id persists as the last event id", b"id: 5\ndata: a\n\ndata: b\n\n",
     [E("message", "a", "5"), E("message", "b", "5")]),
    ("empty id resets the last event id", b"id: 5\ndata: a\n\nid\ndata: b\n\n",
     [E("message", "a", "5"), E("message", "b", "")]),
    ("id with NUL ignored", b"id: 5\ndata: a\n\nid: 6\x007\ndata: b\n\n",
     [E("message", "a", "5"), E("message", "b", "5")]),
    ("id set by a block with no data still counts", b"id: 9\n\ndata: a\n\n", [E("message", "a", "9")]),
    ("retry with digits", b"retry: 3000\ndata: a\n\n", [E("message", "a", "", 3000)]),
    ("retry negative ignored", b"retry: -5\ndata: a\n\n", [E("message", "a")]),
    ("retry non-digit ignored", b"retry: 1.5\ndata: a\n\nretry: 2e3\ndata: b\n\n",
     [E("message", "a"), E("message", "b")]),
    ("retry with non-ASCII digits ignored", "retry: \u0663\u0660\ndata: a\n\n".encode(), [E("message", "a")]),
    ("retry only applies to its own event", b"retry: 10\ndata: a\n\ndata: b\n\n",
     [E("message", "a", "", 10), E("message", "b")]),
    ("retry of ten digits kept", b"retry: 9999999999\ndata: a\n\n", [E("message", "a", "", 9999999999)]),
    ("retry too long to be a sane number ignored", b"retry: 12345678901\ndata: a\n\n", [E("message", "a")]),
    ("retry of thousands of digits ignored, never an error", b"retry: " + b"9" * 5000 + b"\ndata: a\n\n",
     [E("message", "a")]),
    ("unknown fields ignored", b"foo: bar\ndata: a\nDATA: b\n\n", [E("message", "a")]),
    ("events with no data are not dispatched", b"event: ping\n\nid: 1\n\n: c\n\n", []),
    ("a type with no data does not leak into the next event", b"event: ping\n\ndata: a\n\n",
     [E("message", "a")]),
    ("unterminated final event discarded", b"data: a\n\ndata: b\n", [E("message", "a")]),
    ("unterminated final line discarded", b"data: a\n\ndata: b", [E("message", "a")]),
    ("trailing LF of data removed once", b"data: a\ndata:\n\n", [E("message", "a\n")]),
    ("UTF-8 multi-byte", "data: Grâce — ἀγάπη 🙏\n\n".encode(), [E("message", "Grâce — ἀγάπη 🙏")]),
    ("invalid UTF-8 becomes U+FFFD", b"data: a\xffb\xc3\n\n", [E("message", "a\ufffdb\ufffd")]),
    ("NUL and vertical tab are not line ends", b"data: a\x0bb\x0cc\x1cd\x85\n\n",
     [E("message", "a\x0bb\x0cc\x1cd\ufffd")]),
    ("unicode line separators are data", "data: a\u2028b\u0085c\n\n".encode(), [E("message", "a\u2028b\u0085c")]),
    ("many events in one read", b"data: 1\n\ndata: 2\n\ndata: 3\n\n",
     [E("message", "1"), E("message", "2"), E("message", "3")]),
    ("DONE is just data to the decoder", b"data: [DONE]\n\n", [E("message", "[DONE]")]),
]


class SpecVectorTests(unittest.TestCase):
    def test_whole(self):
        for name, data, expected in VECTORS:
            with self.subTest(name):
                self.assertEqual(decode_whole(data), expected)

    def test_one_byte_at_a_time(self):
        for name, data, expected in VECTORS:
            with self.subTest(name):
                self.assertEqual(decode_bytewise(data), expected)

    def test_random_splits(self):
        rng = random.Random(2026)
        for name, data, expected in VECTORS:
            for _ in range(20):
                with self.subTest(name):
                    self.assertEqual(decode_random(data, rng), expected)

    def test_every_two_part_split(self):
        for name, data, expected in VECTORS:
            for cut in range(len(data) + 1):
                with self.subTest(name, cut=cut):
                    decoder = SSEDecoder()
                    events = decoder.feed(data[:cut]) + decoder.feed(data[cut:]) + decoder.close()
                    self.assertEqual(events, expected)


class LineEndTests(unittest.TestCase):
    def test_cr_at_end_of_read_then_lf_is_one_line_end(self):
        decoder = SSEDecoder()
        self.assertEqual(decoder.feed(b"data: a\r"), [])
        self.assertEqual(decoder.feed(b"\n\r"), [E("message", "a")])
        self.assertEqual(decoder.feed(b"\ndata: b\r\n\r\n"), [E("message", "b")])

    def test_cr_at_end_of_read_then_cr_is_a_blank_line(self):
        decoder = SSEDecoder()
        self.assertEqual(decoder.feed(b"data: a\r"), [])
        self.assertEqual(decoder.feed(b"\r"), [E("message", "a")])

    def test_cr_ended_event_dispatches_without_waiting(self):
        # A CR completes a line at once: the event goes out without waiting for a possible LF.
        decoder = SSEDecoder()
        self.assertEqual(decoder.feed(b"data: a\r\r"), [E("message", "a")])

    def test_lf_only_read_after_cr(self):
        decoder = SSEDecoder()
        decoder.feed(b"data: a\r")
        self.assertEqual(decoder.feed(b"\n"), [])
        self.assertEqual(decoder.feed(b"\n"), [E("message", "a")])


class UTF8SplitTests(unittest.TestCase):
    def test_character_split_across_reads(self):
        text = "data: 🙏 ἀγάπη — é\n\n".encode()
        for cut in range(len(text)):
            with self.subTest(cut=cut):
                decoder = SSEDecoder()
                events = decoder.feed(text[:cut]) + decoder.feed(text[cut:])
                self.assertEqual(events, [E("message", "🙏 ἀγάπη — é")])

    def test_bom_split_across_reads(self):
        decoder = SSEDecoder()
        events = decoder.feed(b"\xef") + decoder.feed(b"\xbb") + decoder.feed(b"\xbfdata: a\n\n")
        self.assertEqual(events, [E("message", "a")])


class StateTests(unittest.TestCase):
    def test_last_event_id_and_retry_are_visible(self):
        decoder = SSEDecoder()
        decoder.feed(b"id: 42\nretry: 1500\n\n")
        self.assertEqual((decoder.last_event_id, decoder.retry), ("42", 1500))

    def test_close_discards_partial_event_and_reports_it(self):
        decoder = SSEDecoder()
        decoder.feed(b"data: a\ndata: b")
        self.assertTrue(decoder.has_partial_event)
        self.assertEqual(decoder.close(), [])
        self.assertFalse(decoder.has_partial_event)

    def test_event_is_frozen_value(self):
        event = E("message", "a")
        with self.assertRaises(AttributeError):
            event.data = "b"  # type: ignore[misc]
        self.assertEqual(event, ServerSentEvent(data="a"))
        self.assertEqual(E(data='{"x": 1}').json(), {"x": 1})

    def test_empty_feed_returns_nothing(self):
        self.assertEqual(SSEDecoder().feed(b""), [])


class SizeLimitTests(unittest.TestCase):
    def test_unterminated_line_over_limit_raises(self):
        decoder = SSEDecoder(max_event_bytes=1000)
        decoder.feed(b"data: " + b"x" * 900)
        with self.assertRaises(EventTooLargeError):
            decoder.feed(b"x" * 200)

    def test_many_data_lines_over_limit_raise(self):
        decoder = SSEDecoder(max_event_bytes=1000)
        with self.assertRaises(EventTooLargeError):
            decoder.feed(b"data: xxxxxxxxxx\n" * 200)

    def test_events_under_limit_pass(self):
        decoder = SSEDecoder(max_event_bytes=1000)
        events = decoder.feed((b"data: " + b"x" * 900 + b"\n\n") * 5)
        self.assertEqual(len(events), 5)

    def test_events_before_an_oversized_one_come_first_then_the_error(self):
        data = b"data: a\n\ndata: b\n\ndata: " + b"x" * 100 + b"\n\n"
        for sizes in ([len(data)], [1] * len(data), [3, 50, 200]):
            with self.subTest(sizes=sizes[:3]):
                decoder = SSEDecoder(max_event_bytes=50)
                events, raised, i = [], False, 0
                try:
                    for size in sizes:
                        events += decoder.feed(data[i : i + size])
                        i += size
                    events += decoder.close()
                except EventTooLargeError:
                    raised = True
                self.assertEqual((events, raised), ([E("message", "a"), E("message", "b")], True))

    def test_limit_counts_every_line_of_the_event(self):
        # An id and a comment count too: the limit bounds memory, whatever the lines are.
        decoder = SSEDecoder(max_event_bytes=30)
        with self.assertRaises(EventTooLargeError):
            decoder.feed(b": a long comment line here\nid: 12345\ndata: x\n\n")

    def test_no_limit_by_default(self):
        decoder = SSEDecoder()
        self.assertEqual(decoder.feed(b"data: " + b"x" * 3_000_000 + b"\n\n")[0].data, "x" * 3_000_000)


class ByteLimitTests(unittest.TestCase):
    """max_event_bytes counts the bytes of the event's lines (each with one line end), not characters."""

    CASES = [  # (limit, stream, raised)
        (20, "data: " + "é" * 6 + "\n\n", False),  # 6 + 12 + 1 = 19 bytes (13 characters)
        (20, "data: " + "é" * 7 + "\n\n", True),  # 21 bytes, though only 14 characters
        (20, "data: " + "🙏" * 3 + "\n\n", False),  # 19 bytes
        (20, "data: " + "🙏" * 4 + "\n\n", True),  # 23 bytes, 11 characters
        (19, "data: " + "x" * 12 + "\n\n", False),  # exactly the limit passes
        (19, "data: " + "x" * 13 + "\n\n", True),
        (20, "data: a\n\n: " + "é" * 9 + "\n\n", True),  # a comment counts too: 2 + 18 + 1 = 21
    ]

    def test_limit_in_bytes_at_every_split(self):
        for limit, text, raised in self.CASES:
            data = text.encode()
            for cut in range(len(data) + 1):
                with self.subTest(text, cut=cut):
                    decoder = SSEDecoder(max_event_bytes=limit)
                    try:
                        events = decoder.feed(data[:cut]) + decoder.feed(data[cut:]) + decoder.close()
                    except EventTooLargeError:
                        events = None
                    self.assertEqual(events is None, raised)
                    if not raised:
                        self.assertEqual(events, decode_whole(data))


class LineRulesOnly(SSEDecoder):
    """The decoder with its `data: X` fast path turned off: every block goes through the line rules."""

    def _data_blocks(self, block, events):
        return False


class FastPathTests(unittest.TestCase):
    """The fast path gives exactly what the line rules give, on the streams it is built for and others."""

    def decode(self, cls, data: bytes, sizes: list, limit=None):
        decoder = cls(max_event_bytes=limit)
        events, i = [], 0
        try:
            for size in sizes:
                events += decoder.feed(data[i : i + size])
                i += size
            events += decoder.feed(data[i:]) + decoder.close()
        except EventTooLargeError:
            return events, True
        return events, False

    def test_fast_path_and_line_rules_agree(self):
        rng = random.Random(14)
        words = [b"x", b"{\"a\": 1}", b"\xe2\x82\xac", b"\xff", b"", b" ", b"[DONE]", b"data: ", b":"]
        extras = [b"\n", b": c\n", b"id: 3\n", b"event: e\n", b"retry: 7\n", b"data: x\n", b"\r\n", b"\r"]
        for _ in range(400):
            parts = []
            for _ in range(rng.randint(0, 30)):
                parts.append(b"data: " + b"".join(rng.choice(words) for _ in range(rng.randint(0, 8))) + b"\n\n")
                if rng.random() < 0.1:
                    parts.append(rng.choice(extras))
            data = b"".join(parts)
            sizes = [rng.randint(1, 64) for _ in range(len(data))]
            limit = rng.choice([None, None, 8, 30, 200])
            with self.subTest(data=data[:80], limit=limit):
                expected = self.decode(LineRulesOnly, data, [len(data)], limit)
                self.assertEqual(self.decode(SSEDecoder, data, [len(data)], limit), expected)
                self.assertEqual(self.decode(SSEDecoder, data, sizes, limit), expected)
                self.assertEqual(self.decode(LineRulesOnly, data, sizes, limit), expected)

    def test_vectors_through_the_line_rules_alone(self):
        for name, data, expected in VECTORS:
            with self.subTest(name):
                self.assertEqual(self.decode(LineRulesOnly, data, [len(data)]), (expected, False))


class LinearCostTests(unittest.TestCase):
    def test_one_huge_line_in_small_reads_keeps_pieces_not_copies(self):
        # Quadratic copying would hold a growing bytes object; the decoder keeps the reads as pieces.
        decoder = SSEDecoder()
        piece = b"x" * 1024
        decoder.feed(b"data: ")
        for _ in range(4096):
            decoder.feed(piece)
        self.assertEqual(len(decoder._lines.pending), 4097)
        events = decoder.feed(b"\n\n")
        self.assertEqual(len(events[0].data), 4096 * 1024)


class FuzzTests(unittest.TestCase):
    def test_random_bytes_never_raise_and_splits_agree(self):
        rng = random.Random(7)
        alphabet = [b"data", b":", b" ", b"\n", b"\r", b"id", b"event", b"retry", b"\xff", b"\xe2\x82",
                    b"\xac", b"0", b"x", b"\x00", b"\xef\xbb\xbf"]
        for _ in range(300):
            data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
            expected = decode_whole(data)
            with self.subTest(data=data):
                self.assertEqual(decode_bytewise(data), expected)
                self.assertEqual(decode_random(data, rng), expected)


def reference_decode(data: bytes) -> list:
    """The spec's algorithm written as literally as possible: slow, obvious, whole-input."""
    text = data.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\r":
            lines.append("".join(current))
            current = []
            if i + 1 < len(text) and text[i + 1] == "\n":
                i += 1
        elif ch == "\n":
            lines.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    events, data_buf, event_type, last_id, retry = [], "", "", "", None
    for line in lines:  # the unterminated `current` is discarded at the end of the stream
        if line == "":
            if data_buf:
                events.append(E(event_type or "message", data_buf[:-1], last_id, retry))
            data_buf, event_type, retry = "", "", None
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        if name == "data":
            data_buf += value + "\n"
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value) and len(value) <= 10:
            retry = int(value)  # past 10 digits (115 days in ms) gloo_stream ignores it: no sane number
    return events


class ReferenceTests(unittest.TestCase):
    """The optimised decoder against a literal reading of the spec, on random streams."""

    PARTS = [b"data: ", b"data:", b"data", b"event: up", b"id: 7", b"id", b"retry: 5", b"retry: x", b": c",
             b"data: {\"a\": 1}", b"data: \xe2\x82\xac", b"\xff", b"x", b" ", b"", b"field: v",
             b"\xef\xbb\xbf", b"data: [DONE]"]
    ENDS = [b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n"]

    def test_random_streams_match_reference(self):
        rng = random.Random(99)
        for _ in range(1500):
            data = b"".join(rng.choice(self.PARTS) + rng.choice(self.ENDS) for _ in range(rng.randint(0, 25)))
            if rng.random() < 0.3:
                data += rng.choice(self.PARTS)  # an unterminated tail
            expected = reference_decode(data)
            with self.subTest(data=data):
                self.assertEqual(decode_whole(data), expected)
                self.assertEqual(decode_random(data, rng), expected)

    def test_vectors_match_reference(self):
        for name, data, expected in VECTORS:
            with self.subTest(name):
                self.assertEqual(reference_decode(data), expected)


class ParseLineTests(unittest.TestCase):
    CASES = [
        ('data: {"a": 1}', {"a": 1}),
        ('data:{"a": 1}', {"a": 1}),
        ('data: {"a": 1}\r\n', {"a": 1}),
        (b'data: {"a": 1}\n', {"a": 1}),
        ("data: [DONE]", "[DONE]"),
        ("data:[DONE]", "[DONE]"),
        ("data: not json", None),
        ("data: [1, 2]", None),
        ("data: ", None),
        ("", None),
        (": keep-alive", None),
        ("event: message", None),
        ("id: 3", None),
        (None, None),
        (42, None),
        (b"data: \xff", None),
        ("data: " + "[" * 100000, None),
    ]

    def test_cases(self):
        for line, expected in self.CASES:
            with self.subTest(line=line if not isinstance(line, str) or len(line) < 50 else "deep"):
                self.assertEqual(gloo_stream.parse_sse_line(line), expected)


if __name__ == "__main__":
    unittest.main()
