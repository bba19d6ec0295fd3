// SPDX-License-Identifier: MIT
// node --test web/tests/ : the event-stream parser (web/sse.js), WHATWG "interpreting an event stream".
import test from "node:test";
import assert from "node:assert/strict";
import { load, sweep } from "./load.mjs";

const { createParser } = await load("sse.js");

function run(parts) {
  const parser = createParser();
  const out = [];
  for (const part of parts) out.push(...parser.feed(part));
  out.push(...parser.end());
  return out.map((e) => ({ event: e.event, data: e.data, id: e.id }));
}

const STREAM = "\ufeff: keep-alive\r\ndata: {\"a\":1}\r\n\r\ndata: line1\rdata: line2\r\r" +
  "id: 7\nevent: custom\ndata: x\n\n: comment\n\ndata:nospace\ndata:  two\n\n" +
  "data: [DONE]\r\n\r\ndata: caf\u00e9 \ud83d\ude00\n\nid: bad\u0000id\ndata: y\n\nretry: 12a\ndata: z\n\ndata: unterminated";
const EXPECTED = [
  { event: "message", data: "{\"a\":1}", id: "" },
  { event: "message", data: "line1\nline2", id: "" },
  { event: "custom", data: "x", id: "7" },
  { event: "message", data: "nospace\n two", id: "7" },
  { event: "message", data: "[DONE]", id: "7" },
  { event: "message", data: "caf\u00e9 \ud83d\ude00", id: "7" },
  { event: "message", data: "y", id: "7" },
  { event: "message", data: "z", id: "7" },
];

test("line ends, comments, fields, multi-line data, BOM, bad ids, unterminated event", () => {
  assert.deepEqual(run([STREAM]), EXPECTED);
});

test("the same events at every split into three pieces, and one character at a time", () => {
  assert.deepEqual(run([...STREAM]), EXPECTED);
  for (let i = 0; i <= STREAM.length; i++) {
    for (let j = i; j <= STREAM.length; j += 5) {
      assert.deepEqual(run([STREAM.slice(0, i), STREAM.slice(i, j), STREAM.slice(j)]), EXPECTED, `split ${i},${j}`);
    }
  }
});

test("a CR at the end of a piece waits: it may be half of a CRLF", () => {
  const parser = createParser();
  assert.deepEqual(parser.feed("data: a\r"), []);
  assert.deepEqual(parser.feed("\n").length, 0);
  assert.deepEqual(parser.feed("\r\n").map((e) => e.data), ["a"]);
  assert.deepEqual(run(["data: last\r", "\r"]), [{ event: "message", data: "last", id: "" }]);
  assert.deepEqual(run(["data: last\r\r"]), [{ event: "message", data: "last", id: "" }]);
});

test("retry takes ASCII digits only; empty data dispatches nothing", () => {
  const parser = createParser();
  const events = parser.feed("retry: 250\ndata: a\n\nevent: x\n\ndata:\n\n");
  assert.deepEqual(events.map((e) => [e.event, e.data, e.retry]), [["message", "a", 250], ["message", "", 250]]);
});

test("bytes split inside multi-byte characters, through TextDecoder with stream: true", () => {
  const bytes = new TextEncoder().encode("data: caf\u00e9 \ud83d\ude00\n\n");
  const decoder = new TextDecoder("utf-8");
  const parser = createParser();
  const out = [];
  for (const b of bytes) out.push(...parser.feed(decoder.decode(new Uint8Array([b]), { stream: true })));
  assert.deepEqual(out.map((e) => e.data), ["caf\u00e9 \ud83d\ude00"]);
});

test("linear time: many events, one long line in small pieces, long runs of CRs", async (t) => {
  const cases = {
    "many events in one piece": [(n) => ["data: {\"x\":1}\n\n".repeat(n / 15)], 1],
    "many events, 7-char pieces": [(n) => "data: {\"x\":1}\n\n".repeat(n / 15).match(/[^]{1,7}/g), 1],
    "one long line in 64-char pieces": [(n) => ("data: " + "a".repeat(n) + "\n\n").match(/[^]{1,64}/g), 1],
    "CR line ends": [(n) => ["data: a\r\r".repeat(n / 9)], 1],
    "comment lines": [(n) => [": keep-alive\n".repeat(n / 13) + "data: x\n\n"], 1],
  };
  for (const [name, [build]] of Object.entries(cases)) {
    await t.test(name, () => {
      const { small, large, ratio } = sweep(build, (parts) => run(parts), 20000);
      t.diagnostic(`${name}: ${small.toFixed(3)} ms -> ${large.toFixed(3)} ms, x${ratio.toFixed(2)}`);
      assert.ok(ratio < 9, `${name}: x${ratio.toFixed(1)}`);
    });
  }
});
