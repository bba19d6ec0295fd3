// SPDX-License-Identifier: MIT
/* gloo-stream: a server-sent events parser for fetch() bodies.
 *
 *   import { createParser } from "./sse.js";
 *   const parser = createParser();
 *   parser.feed(text)  -> [{event, data, id}, …]   text already decoded (TextDecoder, stream: true)
 *   parser.end()       -> [{event, data, id}, …]   at the end of the body
 *
 * Follows WHATWG HTML "interpreting an event stream": lines end with CRLF, LF or CR; a CR at
 * the end of a chunk waits for the next chunk (it may be the first half of a CRLF); a leading
 * BOM is dropped; ":" lines are comments (`: keep-alive`); the field name ends at the first
 * colon and one space after it is removed; data lines join with "\n"; a blank line dispatches;
 * an event still open when the body ends is discarded.
 */

/** A parser for one response body: feed() decoded text as it arrives, end() when the body ends. */
export function createParser() {
  let buffer = "";
  let started = false;
  let data = "";
  let eventType = "";
  let lastId = "";
  let retry = null;

  function dispatch(out) {
    // Spec: an empty data buffer dispatches nothing; otherwise drop the final "\n".
    if (data === "") {
      eventType = "";
      return;
    }
    out.push({ event: eventType || "message", data: data.slice(0, -1), id: lastId, retry: retry });
    data = "";
    eventType = "";
  }

  function processLine(line, out) {
    if (line === "") {
      dispatch(out);
      return;
    }
    if (line[0] === ":") return;  // a comment, such as the proxy's `: keep-alive`
    let colon = line.indexOf(":");
    let field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") {
      data += value + "\n";
    } else if (field === "event") {
      eventType = value;
    } else if (field === "id") {
      if (value.indexOf("\u0000") === -1) lastId = value;
    } else if (field === "retry") {
      if (/^[0-9]+$/.test(value)) retry = parseInt(value, 10);
    }
  }

  // How far into `buffer` is known to hold no line end: a long line arriving in small pieces is
  // scanned once, not once per piece (which would be quadratic).
  let scanned = 0;
  let pieces = [];

  /** Complete lines out of the buffer; a trailing CR is held back unless the body has ended. */
  function drain(final) {
    const out = [];
    const length = buffer.length;
    let pos = 0;
    let lf = buffer.indexOf("\n", scanned);
    let cr = buffer.indexOf("\r", scanned);
    while (lf !== -1 || cr !== -1) {
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        if (cr === length - 1 && !final) break;  // maybe CRLF split across chunks
        processLine(buffer.slice(pos, cr), out);
        pos = buffer[cr + 1] === "\n" ? cr + 2 : cr + 1;
      } else {
        processLine(buffer.slice(pos, lf), out);
        pos = lf + 1;
      }
      if (lf !== -1 && lf < pos) lf = buffer.indexOf("\n", pos);
      if (cr !== -1 && cr < pos) cr = buffer.indexOf("\r", pos);
    }
    buffer = buffer.slice(pos);
    // A CR held back at the end is rescanned next time; anything before it has no line end.
    scanned = cr !== -1 && cr >= pos ? cr - pos : buffer.length;
    return out;
  }

  return {
    feed: function (text) {
      if (!text) return [];
      if (!started) {
        started = true;
        if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      }
      // Pieces with no line end wait in a list: appending each to one long string and
      // searching it again would be quadratic for a long line arriving in small pieces.
      if (text.indexOf("\n") === -1 && text.indexOf("\r") === -1 && buffer[buffer.length - 1] !== "\r") {
        pieces.push(text);
        return [];
      }
      buffer += pieces.join("") + text;
      pieces = [];
      return drain(false);
    },
    end: function () {
      buffer += pieces.join("");
      pieces = [];
      const out = drain(true);
      // Whatever is left is an unfinished line of an unfinished event: discarded, as the spec says.
      buffer = "";
      scanned = 0;
      data = "";
      eventType = "";
      return out;
    }
  };
}

