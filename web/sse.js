// SPDX-License-Identifier: MIT
/* gloo-stream: a server-sent events parser for fetch() bodies.
 *
 *   var parser = GlooSSE.createParser();
 *   parser.feed(text)  -> [{event, data, id}, …]   text already decoded (TextDecoder, stream: true)
 *   parser.end()       -> [{event, data, id}, …]   at the end of the body
 *
 * Follows WHATWG HTML "interpreting an event stream": lines end with CRLF, LF or CR; a CR at
 * the end of a chunk waits for the next chunk (it may be the first half of a CRLF); a leading
 * BOM is dropped; ":" lines are comments (`: keep-alive`); the field name ends at the first
 * colon and one space after it is removed; data lines join with "\n"; a blank line dispatches;
 * an event still open when the body ends is discarded.
 */
(function (global) {
  "use strict";

  function createParser() {
    var buffer = "";
    var started = false;
    var data = "";
    var eventType = "";
    var lastId = "";
    var retry = null;

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
      var colon = line.indexOf(":");
      var field = colon === -1 ? line : line.slice(0, colon);
      var value = colon === -1 ? "" : line.slice(colon + 1);
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

    /** Complete lines out of the buffer; a trailing CR is held back unless the body has ended. */
    function drain(final) {
      var out = [];
      var pos = 0;
      var length = buffer.length;
      while (pos < length) {
        var lf = buffer.indexOf("\n", pos);
        var cr = buffer.indexOf("\r", pos);
        if (lf === -1 && cr === -1) break;
        if (cr !== -1 && (lf === -1 || cr < lf)) {
          if (cr === length - 1 && !final) break;  // maybe CRLF split across chunks
          processLine(buffer.slice(pos, cr), out);
          pos = buffer[cr + 1] === "\n" ? cr + 2 : cr + 1;
        } else {
          processLine(buffer.slice(pos, lf), out);
          pos = lf + 1;
        }
      }
      buffer = buffer.slice(pos);
      return out;
    }

    return {
      feed: function (text) {
        if (!text) return [];
        if (!started) {
          started = true;
          if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
        }
        buffer += text;
        return drain(false);
      },
      end: function () {
        var out = drain(true);
        // Whatever is left is an unfinished line of an unfinished event: discarded, as the spec says.
        buffer = "";
        data = "";
        eventType = "";
        return out;
      }
    };
  }

  global.GlooSSE = Object.freeze ? Object.freeze({ createParser: createParser }) : { createParser: createParser };
})(window);
