// SPDX-License-Identifier: MIT
/* gloo-stream: a small, safe markdown renderer for streamed answers.
 *
 *   GlooMarkdown.render(text) -> DocumentFragment
 *
 * The model's text is data, never markup: this file never parses HTML. It builds only
 * H1-H6, P, STRONG, EM, CODE, PRE, OL, UL, LI, A and BR with createElement/textContent;
 * the only attributes it sets are href (absolute http/https URLs only), rel and target on
 * links, and class="language-…" on fenced code. Anything else in the text, including
 * <script>, <img onerror=…> and javascript: links, comes out as plain text.
 *
 * It is called on the whole answer after every network read while the answer streams, so
 * it must accept half-finished markup: an unclosed **, ` or [ stays literal text until its
 * closer arrives, and an unclosed ``` fence renders as a code block that is still growing.
 */
(function (global) {
  "use strict";

  var MAX_DEPTH = 12;          // nested lists and emphasis; deeper input is shown as plain text
  var MAX_LABEL = 1000;        // a link label longer than this is not a link (bounds the scan)
  var MAX_URL = 2048;

  var FENCE_OPEN = /^( {0,3})(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$/;
  var FENCE_CLOSE = /^ {0,3}(`{3,}|~{3,})[ \t]*$/;
  var HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$/;
  var THEMATIC_BREAK = /^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$/;
  var LIST_ITEM = /^([ \t]*)(?:([-*+])|(\d{1,9})([.)]))(?:([ \t]+)(.*)|)$/;
  var LANGUAGE = /^[A-Za-z0-9_+#.-]{1,32}$/;
  var ESCAPABLE = /^[!-\/:-@\[-`{-~]$/;
  var BARE_URL = /^https?:\/\/[^\s<>"]+/;
  var AUTOLINK = /^<(https?:\/\/[^\s<>]{1,2048})>/;
  var WORD_CHAR = /[A-Za-z0-9]/;
  var SPACE = /\s/;

  // ---------------------------------------------------------------------------
  // Elements: the only place that creates nodes
  // ---------------------------------------------------------------------------

  function el(tag) {
    return document.createElement(tag);
  }

  /** The URL as an absolute http(s) href, or null: relative, javascript:, data: … are refused. */
  function safeHref(raw) {
    if (typeof raw !== "string" || raw.length > MAX_URL || /[\u0000-\u001f\u007f]/.test(raw)) return null;
    if (!/^https?:\/\//i.test(raw)) return null;
    var url;
    try {
      url = new URL(raw);
    } catch (e) {
      return null;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") return null;
    return url.href;
  }

  function makeLink(href) {
    var a = el("a");
    a.setAttribute("href", href);
    a.setAttribute("rel", "noopener noreferrer");
    a.setAttribute("target", "_blank");
    return a;
  }

  /** Text with its line breaks as BR elements (chat answers mean a newline as a newline). */
  function appendText(parent, text) {
    if (!text) return;
    var lines = text.split("\n");
    for (var i = 0; i < lines.length; i++) {
      if (i > 0) parent.appendChild(el("br"));
      if (lines[i]) parent.appendChild(document.createTextNode(lines[i]));
    }
  }

  // ---------------------------------------------------------------------------
  // Blocks
  // ---------------------------------------------------------------------------

  function isBlank(line) {
    return /^[ \t]*$/.test(line);
  }

  /** Columns of leading white space, a tab counting to the next multiple of 4. */
  function indentOf(line) {
    var cols = 0;
    for (var i = 0; i < line.length; i++) {
      if (line[i] === " ") cols += 1;
      else if (line[i] === "\t") cols += 4 - (cols % 4);
      else break;
    }
    return cols;
  }

  /** The line without its first `n` columns of leading white space. */
  function dropColumns(line, n) {
    var cols = 0, i = 0;
    while (i < line.length && cols < n) {
      if (line[i] === " ") cols += 1;
      else if (line[i] === "\t") cols += 4 - (cols % 4);
      else break;
      i++;
    }
    return line.slice(i);
  }

  function listItem(line) {
    if (THEMATIC_BREAK.test(line)) return null;
    var m = LIST_ITEM.exec(line);
    if (!m) return null;
    var ordered = m[3] !== undefined;
    var markerWidth = ordered ? m[3].length + 1 : 1;
    var gap = m[5] ? indentOf(m[5]) : 1;
    if (gap > 4) gap = 1;  // a wide gap means indented content, not a wider marker
    return {
      ordered: ordered,
      marker: ordered ? m[4] : m[2],
      indent: indentOf(m[1]),
      contentIndent: indentOf(m[1]) + markerWidth + gap,
      text: m[6] === undefined ? "" : m[6]
    };
  }

  function startsBlock(line) {
    return FENCE_OPEN.test(line) || HEADING.test(line) || THEMATIC_BREAK.test(line) || listItem(line) !== null;
  }

  function sameList(a, b) {
    return a.ordered === b.ordered && a.marker === b.marker;
  }

  /** Render `lines` as blocks into `parent`; in a tight list item paragraphs get no P. */
  function renderBlocks(lines, parent, depth, tight) {
    if (depth > MAX_DEPTH) {
      var p = el("p");
      appendText(p, lines.join("\n"));
      parent.appendChild(p);
      return;
    }
    var i = 0, m, wrotePara = false;
    while (i < lines.length) {
      var line = lines[i];
      if (isBlank(line)) {
        i++;
        continue;
      }
      if ((m = FENCE_OPEN.exec(line))) {
        i = renderFence(lines, i, m, parent);
        continue;
      }
      if ((m = HEADING.exec(line))) {
        var level = m[1].length;
        var title = (m[2] || "").replace(/(?:^|[ \t]+)#+$/, "");
        var h = el("h" + level);
        renderInline(title, h, depth);
        parent.appendChild(h);
        i++;
        continue;
      }
      if (THEMATIC_BREAK.test(line)) {  // no HR in the allowed set: a break is just a gap
        i++;
        continue;
      }
      if (listItem(line)) {
        i = renderList(lines, i, parent, depth);
        continue;
      }
      var para = [line.replace(/^[ \t]+/, "")];
      i++;
      while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i])) {
        para.push(lines[i].replace(/^[ \t]+/, ""));
        i++;
      }
      var text = para.map(function (l) { return l.replace(/[ \t]+$/, ""); }).join("\n");
      if (tight) {
        if (wrotePara) parent.appendChild(el("br"));
        renderInline(text, parent, depth);
        wrotePara = true;
      } else {
        var pEl = el("p");
        renderInline(text, pEl, depth);
        parent.appendChild(pEl);
      }
    }
  }

  function renderFence(lines, start, m, parent) {
    var indent = m[1].length, fence = m[2], language = m[3];
    var body = [], i = start + 1;
    while (i < lines.length) {
      var close = FENCE_CLOSE.exec(lines[i]);
      if (close && close[1][0] === fence[0] && close[1].length >= fence.length) {
        i++;
        break;
      }
      body.push(dropColumns(lines[i], indent));
      i++;
    }
    var pre = el("pre");
    var code = el("code");
    if (language && LANGUAGE.test(language)) code.className = "language-" + language;
    code.textContent = body.join("\n");
    pre.appendChild(code);
    parent.appendChild(pre);
    return i;
  }

  function renderList(lines, start, parent, depth) {
    var first = listItem(lines[start]);
    var list = el(first.ordered ? "ol" : "ul");
    var items = [], loose = false, i = start;
    while (i < lines.length) {
      var item = listItem(lines[i]);
      if (!item || !sameList(item, first) || item.indent > first.indent + 1) break;
      var body = [item.text], sawBlank = false;
      i++;
      while (i < lines.length) {
        var line = lines[i];
        if (isBlank(line)) {
          var j = i;
          while (j < lines.length && isBlank(lines[j])) j++;
          if (j < lines.length && indentOf(lines[j]) >= item.contentIndent) {
            for (; i < j; i++) body.push("");
            sawBlank = true;
            continue;
          }
          break;
        }
        var indent = indentOf(line), nested = listItem(line);
        if (indent >= item.contentIndent || (nested && indent > item.indent + 1)) {
          body.push(dropColumns(line, Math.min(indent, item.contentIndent)));
          i++;
          continue;
        }
        if (!sawBlank && !startsBlock(line)) {  // a lazy continuation line of the item's paragraph
          body.push(line.replace(/^[ \t]+/, ""));
          i++;
          continue;
        }
        break;
      }
      if (sawBlank) loose = true;
      items.push(body);
      if (i < lines.length && isBlank(lines[i])) {
        var k = i;
        while (k < lines.length && isBlank(lines[k])) k++;
        var next = k < lines.length ? listItem(lines[k]) : null;
        if (next && sameList(next, first) && next.indent <= first.indent + 1) {
          loose = true;
          i = k;
          continue;
        }
        break;
      }
    }
    for (var n = 0; n < items.length; n++) {
      var li = el("li");
      renderBlocks(items[n], li, depth + 1, !loose);
      list.appendChild(li);
    }
    parent.appendChild(list);
    return i;
  }

  // ---------------------------------------------------------------------------
  // Inline: code spans, strong, em, links, autolinks; everything else is text
  // ---------------------------------------------------------------------------

  function runLength(s, i, ch) {
    var n = 0;
    while (i + n < s.length && s[i + n] === ch) n++;
    return n;
  }

  /** Inline parsing of one block's text, with memo tables that keep it near linear. */
  function InlineParser(s) {
    this.s = s;
    this.noCloserFrom = Object.create(null);
  }

  /** Start of the next run of exactly `n` backticks in [from, end), or -1. */
  InlineParser.prototype.findBackticks = function (from, end, n) {
    var key = "`" + n + ":" + end;
    if (this.noCloserFrom[key] !== undefined && from >= this.noCloserFrom[key]) return -1;
    var s = this.s, i = from;
    while (i < end) {
      var at = s.indexOf("`", i);
      if (at === -1 || at >= end) break;
      var run = runLength(s, at, "`");
      if (at + run > end) run = end - at;
      if (run === n) return at;
      i = at + run;
    }
    this.noCloserFrom[key] = Math.min(from, this.noCloserFrom[key] === undefined ? from : this.noCloserFrom[key]);
    return -1;
  };

  /** Where the closing delimiter of an emphasis run starts (strong: 2 chars, em: 1), or -1. */
  InlineParser.prototype.findCloser = function (from, end, ch, size) {
    var key = ch + size + ":" + end;
    if (this.noCloserFrom[key] !== undefined && from >= this.noCloserFrom[key]) return -1;
    var s = this.s, i = from;
    while (i < end) {
      var c = s[i];
      if (c === "\\") {
        i += 2;
        continue;
      }
      if (c === "`") {
        var ticks = runLength(s, i, "`");
        var close = this.findBackticks(i + ticks, end, ticks);
        i = close === -1 ? i + ticks : close + ticks;
        continue;
      }
      if (c === ch) {
        var run = Math.min(runLength(s, i, ch), end - i);
        var before = s[i - 1], after = s[i + run];
        var rightFlanking = i > from && before !== undefined && !SPACE.test(before);
        var boundaryOk = ch !== "_" || after === undefined || i + run >= end || !WORD_CHAR.test(after);
        var fits = size === 2 ? run >= 2 : run !== 2;
        if (rightFlanking && boundaryOk && fits) return i + run - size;
        i += run;
        continue;
      }
      i++;
    }
    this.noCloserFrom[key] = from;
    return -1;
  };

  /** Index of the `]` closing a link label opened at `open`, or -1. */
  InlineParser.prototype.findLabelEnd = function (open, end) {
    var s = this.s, depth = 0, limit = Math.min(end, open + MAX_LABEL);
    for (var i = open; i < limit; i++) {
      var c = s[i];
      if (c === "\\") {
        i++;
      } else if (c === "[") {
        depth++;
      } else if (c === "]") {
        depth--;
        if (depth === 0) return i;
      }
    }
    return -1;
  };

  /** A link destination `(url "title")` starting at `i` (the "("): {url, end} or null. */
  InlineParser.prototype.parseDestination = function (i, end) {
    var s = this.s;
    if (s[i] !== "(") return null;
    var j = i + 1;
    while (j < end && (s[j] === " " || s[j] === "\t")) j++;
    var url = "";
    if (s[j] === "<") {
      var close = s.indexOf(">", j + 1);
      if (close === -1 || close >= end) return null;
      url = s.slice(j + 1, close);
      if (/[<\n]/.test(url)) return null;
      j = close + 1;
    } else {
      var parens = 0, startUrl = j;
      while (j < end && j - startUrl <= MAX_URL) {
        var c = s[j];
        if (SPACE.test(c)) break;
        if (c === "(") parens++;
        if (c === ")") {
          if (parens === 0) break;
          parens--;
        }
        j++;
      }
      url = s.slice(startUrl, j);
    }
    while (j < end && (s[j] === " " || s[j] === "\t" || s[j] === "\n")) j++;
    var quote = s[j];
    if (quote === '"' || quote === "'") {
      var titleEnd = s.indexOf(quote, j + 1);
      if (titleEnd === -1 || titleEnd >= end) return null;
      j = titleEnd + 1;
      while (j < end && (s[j] === " " || s[j] === "\t")) j++;
    }
    if (s[j] !== ")") return null;
    return { url: url.replace(/\\([!-\/:-@\[-`{-~])/g, "$1"), end: j + 1 };
  };

  /** Parse s[start, end) into `parent`. */
  InlineParser.prototype.parse = function (start, end, parent, depth, inLink) {
    var s = this.s, text = "", i = start;
    var flush = function () {
      appendText(parent, text);
      text = "";
    };
    while (i < end) {
      var c = s[i];
      if (c === "\\" && i + 1 < end && ESCAPABLE.test(s[i + 1])) {
        text += s[i + 1];
        i += 2;
        continue;
      }
      if (c === "`") {
        var ticks = Math.min(runLength(s, i, "`"), end - i);
        var close = this.findBackticks(i + ticks, end, ticks);
        if (close !== -1) {
          flush();
          var code = el("code");
          var content = s.slice(i + ticks, close).replace(/\n/g, " ");
          if (content.length > 2 && content[0] === " " && content[content.length - 1] === " " && content.trim()) {
            content = content.slice(1, -1);
          }
          code.textContent = content;
          parent.appendChild(code);
          i = close + ticks;
          continue;
        }
        text += s.slice(i, i + ticks);
        i += ticks;
        continue;
      }
      if (c === "*" || c === "_") {
        var run = Math.min(runLength(s, i, c), end - i);
        var next = s[i + run], prev = s[i - 1];
        var leftFlanking = i + run < end && next !== undefined && !SPACE.test(next);
        var boundaryOk = c !== "_" || i === start || prev === undefined || !WORD_CHAR.test(prev);
        if (leftFlanking && boundaryOk && depth < MAX_DEPTH) {
          var size = run >= 2 ? 2 : 1;
          var closer = this.findCloser(i + size, end, c, size);
          if (closer !== -1 && closer > i + size) {
            flush();
            var node = el(size === 2 ? "strong" : "em");
            this.parse(i + size, closer, node, depth + 1, inLink);
            parent.appendChild(node);
            i = closer + size;
            continue;
          }
        }
        text += s.slice(i, i + run);
        i += run;
        continue;
      }
      if (c === "[" && !inLink) {
        var labelEnd = this.findLabelEnd(i, end);
        var dest = labelEnd === -1 ? null : this.parseDestination(labelEnd + 1, end);
        if (dest) {
          flush();
          var href = safeHref(dest.url);
          if (href && depth < MAX_DEPTH) {
            var a = makeLink(href);
            this.parse(i + 1, labelEnd, a, depth + 1, true);
            if (!a.firstChild) a.textContent = href;
            parent.appendChild(a);
          } else {
            // Not an http(s) link (javascript:, data:, relative …): keep the words, drop the link.
            this.parse(i + 1, labelEnd, parent, depth + 1, inLink);
          }
          i = dest.end;
          continue;
        }
      }
      if (c === "<" && !inLink) {
        var auto = AUTOLINK.exec(s.slice(i, Math.min(end, i + MAX_URL + 2)));
        var autoHref = auto && safeHref(auto[1]);
        if (autoHref) {
          flush();
          var autoLink = makeLink(autoHref);
          autoLink.textContent = auto[1];
          parent.appendChild(autoLink);
          i += auto[0].length;
          continue;
        }
      }
      // A bare URL; not right after "](": that is a link still arriving, shown as text until it closes.
      if (c === "h" && !inLink && (i === start || !WORD_CHAR.test(s[i - 1])) &&
          !(i - start >= 2 && s[i - 1] === "(" && s[i - 2] === "]") &&
          (s.startsWith("http://", i) || s.startsWith("https://", i))) {
        var bare = BARE_URL.exec(s.slice(i, Math.min(end, i + MAX_URL)));
        if (bare) {
          var url = trimUrl(bare[0]);
          var bareHref = url.length > 8 ? safeHref(url) : null;
          if (bareHref) {
            flush();
            var bareLink = makeLink(bareHref);
            bareLink.textContent = url;
            parent.appendChild(bareLink);
            i += url.length;
            continue;
          }
        }
      }
      text += c;
      i++;
    }
    flush();
  };

  /** A bare URL without the sentence punctuation that follows it. */
  function trimUrl(url) {
    for (;;) {
      var last = url[url.length - 1];
      if (/[.,;:!?'"*_\]]/.test(last)) {
        url = url.slice(0, -1);
      } else if (last === ")" && url.split("(").length <= url.split(")").length - 1) {
        url = url.slice(0, -1);
      } else {
        return url;
      }
    }
  }

  function renderInline(text, parent, depth) {
    new InlineParser(text).parse(0, text.length, parent, depth, false);
  }

  // ---------------------------------------------------------------------------
  // Entry point
  // ---------------------------------------------------------------------------

  /** The answer `text` as safe DOM nodes (see the top of this file for what can appear). */
  function render(text) {
    var fragment = document.createDocumentFragment();
    var source = String(text == null ? "" : text).replace(/\r\n?/g, "\n").replace(/\u0000/g, "\uFFFD");
    renderBlocks(source.split("\n"), fragment, 0, false);
    return fragment;
  }

  var api = { render: render, safeHref: safeHref };
  if (Object.freeze) Object.freeze(api);
  global.GlooMarkdown = api;
})(window);
