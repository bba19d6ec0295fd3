// SPDX-License-Identifier: MIT
/* gloo-stream: GitHub-flavoured markdown for streamed answers, parsed into tokens (no DOM here).
 *
 *   parse(text)            -> [block, ...]              every block of `text`
 *   parseIncremental(text) -> {done, doneLength, open}   blocks that can no longer change, the
 *                                                        length of text they cover, and the rest
 *   parseInline(text)      -> [inline, ...]
 *   safeHref(url)          -> absolute http(s) URL or null
 *
 * Blocks: paragraph{inline} heading{level, inline} code{lang, text, closed} hr
 *   blockquote{children} list{ordered, start, loose, items: [{task, children}]}
 *   table{align, head: [inline], rows: [[inline]]} footnote{label, children}
 * Inline: text{text} code{text} br strong/em/del{children} link{href, children}
 *   image{href, alt} fnref{label}
 *
 * Every construct is scanned by hand or with anchored regexes free of nested quantifiers, so
 * time is linear in the input (web/tests/markdown.test.mjs sweeps adversarial sizes x4). The
 * model's text is data: nothing here produces HTML; render.js turns tokens into elements.
 */

const MAX_DEPTH = 12;        // nested containers / emphasis; deeper input is shown as text
const MAX_URL = 2048;
const MAX_LABEL = 999;       // a link label longer than this is not a link (CommonMark's limit)
const MAX_PARENS = 32;       // parentheses nesting in a link destination (CommonMark allows a limit)
const MAX_COLUMNS = 64;
const MAX_MATH = 4000;       // characters of one formula; a longer one is text

// ---------------------------------------------------------------------------
// Character helpers
// ---------------------------------------------------------------------------

const isSpaceTab = (c) => c === " " || c === "\t";
const isWhite = (c) => c === " " || c === "\t" || c === "\n" || c === "\r" || c === "\f" || c === "\v";
// Unicode white space and punctuation decide which delimiter runs can open or close emphasis.
const UNICODE_SPACE = /\s/u;
const PUNCT = /[\p{P}\p{S}]/u;
const ASCII_PUNCT = /[!-/:-@[-`{-~]/;
const spaceLike = (c) => c === undefined || UNICODE_SPACE.test(c);
const punctLike = (c) => c !== undefined && PUNCT.test(c);
const isWordChar = (c) => c !== undefined && /[\p{L}\p{N}]/u.test(c);

/** Columns of leading space/tab (a tab advances to the next multiple of 4) and the index after. */
function leading(line) {
  let cols = 0, i = 0;
  for (; i < line.length; i++) {
    const c = line[i];
    if (c === " ") cols += 1;
    else if (c === "\t") cols += 4 - (cols % 4);
    else break;
  }
  return { cols, index: i };
}

/** The line without its first `n` columns of leading white space. */
function dropColumns(line, n) {
  let cols = 0, i = 0;
  while (i < line.length && cols < n) {
    const c = line[i];
    if (c === " ") cols += 1;
    else if (c === "\t") cols += 4 - (cols % 4);
    else break;
    i++;
  }
  return line.slice(i);
}

function isBlank(line) {
  for (let i = 0; i < line.length; i++) if (!isSpaceTab(line[i])) return false;
  return true;
}

/** `s` without trailing spaces and tabs (a hand loop: /[ \t]+$/ is quadratic on long runs). */
function trimEndSpaces(s) {
  let end = s.length;
  while (end > 0 && isSpaceTab(s[end - 1])) end--;
  return end === s.length ? s : s.slice(0, end);
}

function trimSpaces(s) {
  let start = 0;
  while (start < s.length && isSpaceTab(s[start])) start++;
  return trimEndSpaces(start ? s.slice(start) : s);
}

function runOf(s, i, ch) {
  let n = 0;
  while (i + n < s.length && s[i + n] === ch) n++;
  return n;
}

// ---------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------

/** The URL as an absolute http(s) href, or null: relative, javascript:, data: ... are refused. */
export function safeHref(raw) {
  if (typeof raw !== "string" || raw.length > MAX_URL) return null;
  for (let i = 0; i < raw.length; i++) {
    const code = raw.charCodeAt(i);
    if (code < 0x21 || code === 0x7f) return null;
  }
  if (!/^https?:\/\//i.test(raw)) return null;
  let url;
  try {
    url = new URL(raw);
  } catch (e) {
    return null;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return null;
  return url.href;
}

// ---------------------------------------------------------------------------
// Block lines: what kind of block a line starts
// ---------------------------------------------------------------------------

/** {ch, length, info, indent} for a fence opener such as ```python, or null. */
function fenceOpen(line) {
  const { cols, index } = leading(line);
  if (cols > 3) return null;
  const ch = line[index];
  if (ch !== "`" && ch !== "~") return null;
  const length = runOf(line, index, ch);
  if (length < 3) return null;
  const info = trimSpaces(line.slice(index + length));
  if (ch === "`" && info.indexOf("`") !== -1) return null;
  let lang = "";
  for (let i = 0; i < info.length && !isWhite(info[i]) && i < 32; i++) lang += info[i];
  if (!/^[A-Za-z0-9_+#.-]+$/.test(lang)) lang = "";
  return { ch, length, lang, indent: cols };
}

function fenceCloses(line, fence) {
  const { cols, index } = leading(line);
  if (cols > 3 || line[index] !== fence.ch) return false;
  const length = runOf(line, index, fence.ch);
  return length >= fence.length && isBlank(line.slice(index + length));
}

/** {level, text} for an ATX heading such as "## Title ##", or null. */
function heading(line) {
  const { cols, index } = leading(line);
  if (cols > 3 || line[index] !== "#") return null;
  const level = runOf(line, index, "#");
  if (level > 6) return null;
  const after = index + level;
  if (after < line.length && !isSpaceTab(line[after])) return null;
  let text = trimSpaces(line.slice(after));
  // A closing run of #s, when it is all #s or follows a space.
  let end = text.length;
  while (end > 0 && text[end - 1] === "#") end--;
  if (end < text.length && (end === 0 || isSpaceTab(text[end - 1]))) text = trimEndSpaces(text.slice(0, end));
  return { level, text };
}

function thematicBreak(line) {
  const { cols, index } = leading(line);
  if (cols > 3) return false;
  const ch = line[index];
  if (ch !== "-" && ch !== "*" && ch !== "_") return false;
  let count = 0;
  for (let i = index; i < line.length; i++) {
    if (line[i] === ch) count++;
    else if (!isSpaceTab(line[i])) return false;
  }
  return count >= 3;
}

/** A setext underline ("===" or "---") after a paragraph line: 1, 2, or 0. */
function setextLevel(line) {
  const { cols, index } = leading(line);
  if (cols > 3) return 0;
  const ch = line[index];
  if (ch !== "=" && ch !== "-") return 0;
  const n = runOf(line, index, ch);
  return isBlank(line.slice(index + n)) ? (ch === "=" ? 1 : 2) : 0;
}

/** A list item marker: {ordered, marker, start, indent, contentIndent, text}, or null. */
function listItem(line) {
  const { cols, index } = leading(line);
  let i = index, ordered = false, marker, start = 1;
  const c = line[i];
  if (c === "-" || c === "*" || c === "+") {
    marker = c;
    i += 1;
  } else {
    let digits = 0;
    while (digits < 10 && line[i + digits] >= "0" && line[i + digits] <= "9") digits++;
    if (digits === 0 || digits > 9) return null;
    const delim = line[i + digits];
    if (delim !== "." && delim !== ")") return null;
    ordered = true;
    marker = delim;
    start = parseInt(line.slice(i, i + digits), 10);
    i += digits + 1;
  }
  if (i < line.length && !isSpaceTab(line[i])) return null;
  const markerEnd = cols + (i - index);
  const rest = line.slice(i);
  const gap = leading(rest);
  let contentIndent, text;
  if (gap.index === rest.length) {        // an empty item
    contentIndent = markerEnd + 1;
    text = "";
  } else if (gap.cols > 4) {              // a wide gap is indented content, not a wider marker
    contentIndent = markerEnd + 1;
    text = dropColumns(rest, 1);
  } else {
    contentIndent = markerEnd + gap.cols;
    text = rest.slice(gap.index);
  }
  return { ordered, marker, start, indent: cols, contentIndent, text };
}

function quoteLine(line) {
  const { cols, index } = leading(line);
  return cols <= 3 && line[index] === ">";
}

/** The content of a ">" line: after the marker and one optional space. */
function stripQuote(line) {
  const { index } = leading(line);
  let i = index + 1;
  if (line[i] === " ") i++;
  else if (line[i] === "\t") return "  " + line.slice(i + 1);  // a tab counts as the space plus the rest
  return line.slice(i);
}

/** "[^label]: text": {label, text}, or null. */
function footnoteDef(line) {
  const { cols, index } = leading(line);
  if (cols > 3 || line[index] !== "[" || line[index + 1] !== "^") return null;
  const close = line.indexOf("]", index + 2);
  if (close === -1 || close - index > 100 || line[close + 1] !== ":") return null;
  const label = line.slice(index + 2, close);
  if (!label || /[\s\[]/.test(label)) return null;
  return { label, text: trimSpaces(line.slice(close + 2)) };
}

/** The cells of a table row, split on unescaped "|" (GitHub splits inside code spans too). */
function splitRow(line) {
  let s = trimSpaces(line);
  const cells = [];
  let start = 0;
  if (s[0] === "|") start = 1;
  let cell = "";
  let i = start;
  for (; i < s.length; i++) {
    const c = s[i];
    if (c === "\\" && s[i + 1] === "|") {
      cell += "|";
      i++;
    } else if (c === "|") {
      cells.push(trimSpaces(cell));
      cell = "";
      if (cells.length > MAX_COLUMNS * 4) return cells;
    } else {
      cell += c;
    }
  }
  const last = trimSpaces(cell);
  if (last !== "" || s[s.length - 1] !== "|" || s.length === 1) cells.push(last);
  return cells;
}

/** The alignments of a delimiter row such as "| :--- | :---: | ---: |", or null. */
function delimiterRow(line) {
  if (line.indexOf("-") === -1) return null;
  const s = trimSpaces(line);
  if (!s || leading(line).cols > 3) return null;
  const cells = splitRow(s);
  if (cells.length === 0 || cells.length > MAX_COLUMNS) return null;
  const align = [];
  for (const cell of cells) {
    let a = 0, b = cell.length;
    const left = cell[0] === ":";
    const right = cell[b - 1] === ":" && b > 1;
    if (left) a++;
    if (right) b--;
    if (b - a < 1) return null;
    for (let i = a; i < b; i++) if (cell[i] !== "-") return null;
    align.push(left && right ? "center" : right ? "right" : left ? "left" : "");
  }
  // One column needs a pipe somewhere, or "---" alone would be a table.
  if (cells.length === 1 && s.indexOf("|") === -1) return null;
  return align;
}

function tableStarts(lines, i) {
  if (i + 1 >= lines.length || lines[i].indexOf("|") === -1) return null;
  const align = delimiterRow(lines[i + 1]);
  if (!align) return null;
  const head = splitRow(lines[i]);
  return head.length === align.length ? align : null;
}

/** Does `line` start a block that ends a paragraph? (Ordered lists must start at 1 to.) */
function interruptsParagraph(line, lines, i) {
  if (fenceOpen(line) || heading(line) || thematicBreak(line) || quoteLine(line) || footnoteDef(line)) return true;
  if (line.trim() === "$$") return true;
  const item = listItem(line);
  if (item && item.text !== "" && (!item.ordered || item.start === 1)) return true;
  return tableStarts(lines, i) !== null;
}

// ---------------------------------------------------------------------------
// Blocks
// ---------------------------------------------------------------------------

/**
 * The blocks of `lines` (already split, no line ends). Each top-level block records `line`,
 * the index of its first line, and `next`, the index where the following block begins.
 */
function parseLines(lines, depth, carry = null) {
  const blocks = [];
  if (depth > MAX_DEPTH) {
    const text = lines.join("\n");
    if (text.trim()) blocks.push({ type: "paragraph", inline: [{ type: "text", text }], line: 0, next: lines.length });
    return blocks;
  }
  let i = 0;
  const push = (block, first) => {
    block.line = first;
    blocks.push(block);
  };
  // The rest of a list or a table whose first part was already reported done (parseIncremental).
  if (carry && carry.type === "table") {
    const rows = [], rowLines = [];
    while (i < lines.length && isTableRow(lines[i])) {
      rows.push(tableRow(lines[i], carry.align.length, depth));
      rowLines.push(i++);
    }
    if (rows.length) push({ type: "table", align: carry.align, head: null, rows, continued: true, rowLines }, 0);
  } else if (carry && carry.type === "list") {
    const item = lines.length ? listItem(lines[0]) : null;
    if (item && sameList(item, carry) && item.indent <= carry.indent + 3 && !thematicBreak(lines[0])) {
      i = parseList(lines, 0, depth, push, carry);
      blocks[blocks.length - 1].continued = true;
    }
  }
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) {
      i++;
      continue;
    }
    const first = i;
    if (line.trim() === "$$") {  // display math: $$, the TeX, $$ (each on its own line)
      const body = [];
      let closed = false;
      i++;
      while (i < lines.length) {
        if (lines[i].trim() === "$$") {
          closed = true;
          i++;
          break;
        }
        body.push(lines[i]);
        i++;
      }
      push({ type: "math", tex: body.join("\n"), display: true, closed }, first);
      continue;
    }
    const fence = fenceOpen(line);
    if (fence) {
      const body = [];
      let closed = false;
      i++;
      while (i < lines.length) {
        if (fenceCloses(lines[i], fence)) {
          closed = true;
          i++;
          break;
        }
        body.push(dropColumns(lines[i], fence.indent));
        i++;
      }
      push({ type: "code", lang: fence.lang, text: body.join("\n"), closed }, first);
      continue;
    }
    const h = heading(line);
    if (h) {
      push({ type: "heading", level: h.level, inline: parseInline(h.text, depth) }, first);
      i++;
      continue;
    }
    if (thematicBreak(line)) {
      push({ type: "hr" }, first);
      i++;
      continue;
    }
    if (quoteLine(line)) {
      const inner = [];
      let lazyOk = false;
      while (i < lines.length) {
        const l = lines[i];
        if (quoteLine(l)) {
          const content = stripQuote(l);
          inner.push(content);
          lazyOk = !isBlank(content) && !fenceOpen(content);
        } else if (lazyOk && !isBlank(l) && !interruptsParagraph(l, lines, i)) {
          inner.push(l);  // a lazy continuation of the quoted paragraph
        } else {
          break;
        }
        i++;
      }
      push({ type: "blockquote", children: stripPositions(parseLines(inner, depth + 1)) }, first);
      continue;
    }
    const note = footnoteDef(line);
    if (note) {
      const inner = [note.text];
      i++;
      while (i < lines.length) {
        const l = lines[i];
        if (isBlank(l)) {
          let j = i;
          while (j < lines.length && isBlank(lines[j])) j++;
          if (j < lines.length && leading(lines[j]).cols >= 4) {
            for (; i < j; i++) inner.push("");
            continue;
          }
          break;
        }
        if (leading(l).cols >= 4) inner.push(dropColumns(l, 4));
        else if (!interruptsParagraph(l, lines, i)) inner.push(l);
        else break;
        i++;
      }
      push({ type: "footnote", label: note.label, children: stripPositions(parseLines(inner, depth + 1)) }, first);
      continue;
    }
    if (listItem(line)) {
      i = parseList(lines, i, depth, push);
      continue;
    }
    const align = tableStarts(lines, i);
    if (align) {
      const head = splitRow(line).map((cell) => parseInline(cell, depth));
      const rows = [], rowLines = [];
      i += 2;
      while (i < lines.length && isTableRow(lines[i])) {
        rows.push(tableRow(lines[i], align.length, depth));
        rowLines.push(i++);
      }
      push({ type: "table", align, head, rows, rowLines }, first);
      continue;
    }
    // A paragraph: until a blank line or a block that may interrupt it.
    const para = [trimSpaces(line)];
    i++;
    let level = 0;
    while (i < lines.length && !isBlank(lines[i])) {
      level = setextLevel(lines[i]);
      if (level) {
        i++;
        break;
      }
      if (interruptsParagraph(lines[i], lines, i)) break;
      para.push(trimSpaces(lines[i]));
      i++;
    }
    const text = para.join("\n");
    if (level) push({ type: "heading", level, inline: parseInline(text, depth) }, first);
    else push({ type: "paragraph", inline: parseInline(text, depth) }, first);
  }
  for (let b = 0; b < blocks.length; b++) blocks[b].next = b + 1 < blocks.length ? blocks[b + 1].line : lines.length;
  return blocks;
}

function stripPositions(blocks) {
  for (const block of blocks) {
    delete block.line;
    delete block.next;
    delete block.itemLines;
    delete block.rowLines;
    delete block.first;
  }
  return blocks;
}

/** A line that continues a table: not blank, with a pipe, and not the start of another block. */
function isTableRow(line) {
  return !isBlank(line) && line.indexOf("|") !== -1 && !interruptsParagraph(line, [], 0);
}

function tableRow(line, columns, depth) {
  const cells = splitRow(line);
  const row = [];
  for (let c = 0; c < columns; c++) row.push(parseInline(cells[c] || "", depth));
  return row;
}

function sameList(a, b) {
  return a.ordered === b.ordered && a.marker === b.marker;
}

/** A list starting at lines[start] (`first`: its first item, when it began before `lines`); returns the
 * index after it. */
function parseList(lines, start, depth, push, first = listItem(lines[start])) {
  const items = [], itemLines = [];
  let loose = false, i = start;
  while (i < lines.length) {
    const item = listItem(lines[i]);
    if (!item || !sameList(item, first) || item.indent > first.indent + 3 || thematicBreak(lines[i])) break;
    itemLines.push(i);
    const body = [item.text];
    let sawBlank = false;
    i++;
    while (i < lines.length) {
      const line = lines[i];
      if (isBlank(line)) {
        let j = i;
        while (j < lines.length && isBlank(lines[j])) j++;
        if (j < lines.length && leading(lines[j]).cols >= item.contentIndent && item.text !== "") {
          for (; i < j; i++) body.push("");
          sawBlank = true;
          continue;
        }
        break;
      }
      const cols = leading(line).cols;
      if (cols >= item.contentIndent) {
        body.push(dropColumns(line, item.contentIndent));
        i++;
        continue;
      }
      const nested = listItem(line);
      if (nested && cols > item.indent && !thematicBreak(line)) {  // a sub-list indented a little too little
        body.push(dropColumns(line, cols));
        i++;
        continue;
      }
      if (!sawBlank && !nested && !interruptsParagraph(line, lines, i)) {  // a lazy continuation line
        body.push(trimSpaces(line));
        i++;
        continue;
      }
      break;
    }
    // A task list item: "[ ] " or "[x] " first in the item.
    let task = null;
    const head = body[0];
    if (/^\[[ xX]\](?:[ \t]|$)/.test(head)) {
      task = head[1] !== " ";
      body[0] = head.slice(3).replace(/^[ \t]/, "");
    }
    const children = stripPositions(parseLines(body, depth + 1));
    if (sawBlank && children.length > 1) loose = true;
    items.push({ task, children });
    if (i < lines.length && isBlank(lines[i])) {
      let k = i;
      while (k < lines.length && isBlank(lines[k])) k++;
      const next = k < lines.length ? listItem(lines[k]) : null;
      if (next && sameList(next, first) && next.indent <= first.indent + 3 && !thematicBreak(lines[k])) {
        loose = true;
        i = k;
        continue;
      }
      break;
    }
  }
  push({ type: "list", ordered: first.ordered, start: first.start, loose, items, itemLines, first }, start);
  return i;
}

function splitLines(text) {
  let source = String(text == null ? "" : text);
  if (source.indexOf("\r") !== -1) source = source.replace(/\r\n?/g, "\n");
  if (source.indexOf("\u0000") !== -1) source = source.replace(/\u0000/g, "\uFFFD");
  return source.split("\n");
}

/** Every block of `text`. */
export function parse(text) {
  return stripPositions(parseLines(splitLines(text), 0));
}

/**
 * The blocks of a growing `text` that later text can no longer change, and the rest.
 *
 * A block is done when the block after it has begun and two complete lines follow its end: a
 * block's end is decided by the next line, and a table or setext heading by one more. The
 * caller keeps `doneLength` characters as rendered and passes only the remainder next time,
 * with the `carry` this call returned.
 *
 * A long list or table that is still open is split too, so that its finished part is not parsed
 * (or rendered) again: the items whose next item has begun on a complete line, and the rows on
 * complete lines, are reported done as a block marked `more: true`; the rest comes as a block
 * marked `continued: true` (in `open` now, and in the next call, given the `carry`).
 * `joinBlocks()` puts such pieces back together: the same blocks as `parse()` of the whole text.
 */
export function parseIncremental(text, carry = null) {
  let source = String(text == null ? "" : text);
  if (source.indexOf("\u0000") !== -1) source = source.replace(/\u0000/g, "\uFFFD");
  // Lines with where each begins in `source` (CR, LF and CRLF all end a line).
  const lines = [], starts = [];
  let pos = 0, cr = source.indexOf("\r");
  for (;;) {
    const lf = source.indexOf("\n", pos);
    if (cr !== -1 && cr < pos) cr = source.indexOf("\r", pos);
    starts.push(pos);
    if (lf === -1 && cr === -1) {
      lines.push(source.slice(pos));
      break;
    }
    const end = cr !== -1 && (lf === -1 || cr < lf) ? cr : lf;
    lines.push(source.slice(pos, end));
    pos = end + (source[end] === "\r" && source[end + 1] === "\n" ? 2 : 1);
  }
  const blocks = parseLines(lines, 0, carry);
  const lastLine = lines.length - 1;  // possibly incomplete
  let doneCount = 0;
  while (doneCount < blocks.length - 1 && blocks[doneCount].next + 1 < lastLine) doneCount++;
  let doneLength = doneCount > 0 ? starts[blocks[doneCount - 1].next] : 0;
  const done = blocks.slice(0, doneCount), open = blocks.slice(doneCount);
  let next = null;
  const last = open.length === 1 ? open[0] : null;
  if (last && last.type === "list") {
    // Item j is done once item j + 1 has begun on a complete line.
    let j = last.itemLines.length - 1;
    while (j > 0 && last.itemLines[j] >= lastLine) j--;
    if (j > 0) {
      done.push({ ...last, items: last.items.slice(0, j), more: true });
      open[0] = { ...last, items: last.items.slice(j), continued: true };
      doneLength = starts[last.itemLines[j]];
    }
    next = { type: "list", ordered: last.first.ordered, marker: last.first.marker, indent: last.first.indent };
  } else if (last && last.type === "table") {
    let r = 0;
    while (r < last.rowLines.length && last.rowLines[r] < lastLine) r++;
    if (r > 0) {
      done.push({ ...last, rows: last.rows.slice(0, r), more: true });
      open.length = 0;
      if (r < last.rows.length) open.push({ ...last, head: null, rows: last.rows.slice(r), continued: true });
      doneLength = r < last.rows.length ? starts[last.rowLines[r]] : starts[lastLine];
    }
    next = { type: "table", align: last.align };
  }
  // The next call's text begins where this one's done part ends: a split leaves it at the rest of the
  // list or table (so `next` applies); nothing done leaves it where this call began (so `carry` still does).
  const split = done.length > 0 && done[done.length - 1].more;
  return { done: stripPositions(done), doneLength, open: stripPositions(open),
           carry: split ? next : doneLength === 0 ? carry : null };
}

/** Blocks with split lists and tables (`more` / `continued`, from parseIncremental) joined again. */
export function joinBlocks(blocks) {
  const out = [];
  for (const block of blocks) {
    const prev = out[out.length - 1];
    if (block.continued && prev && prev.more && prev.type === block.type) {
      if (block.type === "list") {
        prev.items = prev.items.concat(block.items);
        prev.loose = prev.loose || block.loose;
      } else {
        prev.rows = prev.rows.concat(block.rows);
      }
      prev.more = Boolean(block.more);
      continue;
    }
    out.push({ ...block });
  }
  for (const block of out) {
    delete block.more;
    delete block.continued;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Inline: one left-to-right pass into a linked list, then CommonMark's emphasis algorithm
// (delimiter stack with per-kind lower bounds, so unmatched runs are never rescanned).
// ---------------------------------------------------------------------------

/** The text of a backslash escape, or the characters as they are. */
function unescapeText(s) {
  if (s.indexOf("\\") === -1) return s;
  let out = "";
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "\\" && i + 1 < s.length && ASCII_PUNCT.test(s[i + 1])) {
      out += s[i + 1];
      i++;
    } else {
      out += s[i];
    }
  }
  return out;
}

class Inline {
  constructor(s) {
    this.s = s;
    this.head = { type: "head", prev: null, next: null };
    this.tail = this.head;
    this.delims = null;          // top of the delimiter stack (emphasis runs)
    this.brackets = null;        // top of the bracket stack ("[" and "![")
    this.nextRun = null;         // backtick run index -> next run of the same length
    this.quoteCache = Object.create(null);
    this.dollars = null;         // where a `$` may close inline math, in order (found once per text)
    this.dollarAt = 0;           // the first of them not yet passed: openers come left to right
  }

  /** Inline math at `i`: `$$...$$` (display) or `$...$` (the opening `$` not before a space, the
   * closing one not after a space or before a digit, so "$5 and $10" stays text); null otherwise.
   * Each closer is looked at once over the whole text: linear. */
  mathSpan(i) {
    const s = this.s;
    if (s[i + 1] === "$") {
      const close = s.indexOf("$$", i + 2);
      if (close === -1 || close - i > MAX_MATH || !s.slice(i + 2, close).trim()) return null;
      return { tex: s.slice(i + 2, close), display: true, end: close + 2 };
    }
    if (i + 1 >= s.length || isWhite(s[i + 1])) return null;
    if (this.dollars === null) {
      this.dollars = [];
      for (let k = s.indexOf("$"); k !== -1; k = s.indexOf("$", k + 1)) {
        if (!isWhite(s[k - 1]) && s[k - 1] !== "\\" && !(s[k + 1] >= "0" && s[k + 1] <= "9") && s[k + 1] !== "$" &&
            s[k - 1] !== "$") this.dollars.push(k);
      }
    }
    while (this.dollarAt < this.dollars.length && this.dollars[this.dollarAt] <= i) this.dollarAt++;
    const close = this.dollars[this.dollarAt];
    if (close === undefined || close - i > MAX_MATH) return null;
    return { tex: s.slice(i + 1, close), display: false, end: close + 1 };
  }

  append(node) {
    node.prev = this.tail;
    node.next = null;
    this.tail.next = node;
    this.tail = node;
    return node;
  }

  text(t) {
    if (!t) return;
    if (this.tail.type === "text" && !this.tail.delim) this.tail.text += t;
    else this.append({ type: "text", text: t });
  }

  /** Where the next backtick run exactly `n` long starts after `from`, or -1 (one scan per text). */
  closingTicks(from, n) {
    if (this.nextRun === null) {
      // Every backtick run, then each run's next same-length run, found right to left.
      const s = this.s, runs = [];
      for (let i = s.indexOf("`"); i !== -1; ) {
        const len = runOf(s, i, "`");
        runs.push([i, len]);
        i = s.indexOf("`", i + len);
      }
      const next = new Map(), seen = new Map();
      for (let r = runs.length - 1; r >= 0; r--) {
        const [pos, len] = runs[r];
        next.set(pos, seen.has(len) ? seen.get(len) : -1);
        seen.set(len, pos);
      }
      this.nextRun = next;
    }
    const found = this.nextRun.get(from - n);
    return found === undefined ? -1 : found;
  }

  /** s.indexOf(ch, from), remembered: repeated searches over the same stretch cost nothing. */
  nextPlain(ch, from) {
    const key = "p" + ch;
    const cache = this.quoteCache[key];
    if (cache && from >= cache.from && (cache.at === -1 || from <= cache.at)) return cache.at;
    const at = this.s.indexOf(ch, from);
    this.quoteCache[key] = { from, at };
    return at;
  }

  /** The next unescaped `quote` at or after `from`, or -1; calls come in increasing `from`. */
  nextQuote(quote, from) {
    const cache = this.quoteCache[quote];
    if (cache && from >= cache.from && (cache.at === -1 || from <= cache.at)) return cache.at;
    const s = this.s;
    let at = s.indexOf(quote, from);
    while (at !== -1) {
      let slashes = 0;
      while (at - slashes - 1 >= from && s[at - slashes - 1] === "\\") slashes++;
      if (slashes % 2 === 0) break;
      at = s.indexOf(quote, at + 1);
    }
    this.quoteCache[quote] = { from, at };
    return at;
  }

  /** An inline link's "(destination "title")" at s[i] === "(": {href, end} or null. */
  destination(i) {
    const s = this.s;
    let j = i + 1;
    while (j < s.length && isWhite(s[j])) j++;
    let url;
    if (s[j] === "<") {
      const close = this.nextPlain(">", j + 1);
      const nl = this.nextPlain("\n", j + 1);
      if (close === -1 || (nl !== -1 && nl < close) || close - j > MAX_URL) return null;
      url = s.slice(j + 1, close).replace(/ /g, "%20");
      if (url.indexOf("<") !== -1) return null;
      j = close + 1;
    } else {
      let parens = 0;
      const startUrl = j;
      for (; j < s.length; j++) {
        const c = s[j];
        if (isWhite(c) || c.charCodeAt(0) < 0x20) break;
        if (c === "\\" && j + 1 < s.length && ASCII_PUNCT.test(s[j + 1])) {
          j++;
        } else if (c === "(") {
          if (++parens > MAX_PARENS) return null;
        } else if (c === ")") {
          if (parens === 0) break;
          parens--;
        }
        if (j - startUrl > MAX_URL) return null;
      }
      if (parens !== 0) return null;
      url = s.slice(startUrl, j);
    }
    const beforeTitle = j;
    while (j < s.length && isWhite(s[j])) j++;
    const q = s[j];
    if ((q === '"' || q === "'" || q === "(") && j > beforeTitle) {
      const close = this.nextQuote(q === "(" ? ")" : q, j + 1);
      if (close === -1) return null;
      j = close + 1;
      while (j < s.length && isWhite(s[j])) j++;
    }
    if (s[j] !== ")") return null;
    return { url: unescapeText(url), end: j + 1 };
  }

  parse() {
    const s = this.s;
    let i = 0, text = "";
    const flush = () => {
      this.text(text);
      text = "";
    };
    while (i < s.length) {
      const c = s[i];
      if (c === "\\") {
        const n = s[i + 1];
        if (n === "\n") {
          flush();
          this.append({ type: "br" });
          i += 2;
          continue;
        }
        if (n !== undefined && ASCII_PUNCT.test(n)) {
          text += n;
          i += 2;
          continue;
        }
        text += c;
        i++;
        continue;
      }
      if (c === "\n") {
        flush();
        this.append({ type: "br" });  // chat answers mean a newline as a newline
        i++;
        continue;
      }
      if (c === "`") {
        const n = runOf(s, i, "`");
        const close = this.closingTicks(i + n, n);
        if (close !== -1) {
          flush();
          let code = s.slice(i + n, close).replace(/\n/g, " ");
          if (code.length > 2 && code[0] === " " && code[code.length - 1] === " " && code.trim()) {
            code = code.slice(1, -1);
          }
          this.append({ type: "code", text: code });
          i = close + n;
          continue;
        }
        text += s.slice(i, i + n);
        i += n;
        continue;
      }
      if (c === "$") {
        const math = this.mathSpan(i);
        flush();
        if (math) {
          this.append({ type: "math", tex: math.tex, display: math.display });
          i = math.end;
        } else {
          this.text(s[i + 1] === "$" ? "$$" : "$");
          i += s[i + 1] === "$" ? 2 : 1;
        }
        continue;
      }
      if (c === "*" || c === "_" || c === "~") {
        const n = runOf(s, i, c);
        if (c === "~" && n > 2) {
          text += s.slice(i, i + n);
          i += n;
          continue;
        }
        flush();
        const before = i === 0 ? undefined : s[i - 1];
        const after = s[i + n];
        const left = !spaceLike(after) && (!punctLike(after) || spaceLike(before) || punctLike(before));
        const right = !spaceLike(before) && (!punctLike(before) || spaceLike(after) || punctLike(after));
        let canOpen = left, canClose = right;
        if (c === "_") {
          canOpen = left && (!right || punctLike(before));
          canClose = right && (!left || punctLike(after));
        }
        const node = this.append({ type: "text", text: s.slice(i, i + n), delim: true });
        if (canOpen || canClose) {
          const d = { ch: c, node, n, orig: n, canOpen, canClose, prev: this.delims, next: null, active: true };
          if (this.delims) this.delims.next = d;
          this.delims = d;
        }
        i += n;
        continue;
      }
      if (c === "!" && s[i + 1] === "[") {
        flush();
        const node = this.append({ type: "text", text: "![", delim: true });
        this.brackets = { node, image: true, active: true, prev: this.brackets, delims: this.delims, start: i + 2 };
        i += 2;
        continue;
      }
      if (c === "[") {
        // A footnote reference "[^label]".
        if (s[i + 1] === "^") {
          const close = this.nextPlain("]", i + 2);
          if (close !== -1 && close - i <= 100) {
            const label = s.slice(i + 2, close);
            if (label && !/[\s\[]/.test(label)) {
              flush();
              this.append({ type: "fnref", label });
              i = close + 1;
              continue;
            }
          }
        }
        flush();
        const node = this.append({ type: "text", text: "[", delim: true });
        this.brackets = { node, image: false, active: true, prev: this.brackets, delims: this.delims, start: i + 1 };
        i++;
        continue;
      }
      if (c === "]") {
        const opener = this.brackets;
        if (!opener) {
          text += c;
          i++;
          continue;
        }
        this.brackets = opener.prev;
        const dest = opener.active && s[i + 1] === "(" && i - opener.start <= MAX_LABEL ? this.destination(i + 1) : null;
        if (!dest) {
          text += c;
          i++;
          continue;
        }
        flush();
        const href = safeHref(dest.url);
        // Emphasis inside the label is settled first, then the label's nodes move into the link.
        this.processEmphasis(opener.delims);
        const link = { type: opener.image ? "image" : "link", href, first: null, last: null, alt: "" };
        if (opener.image) link.alt = unescapeText(s.slice(opener.start, i));
        if (opener.node.next) {
          link.first = opener.node.next;
          link.last = this.tail;
          opener.node.next = null;
          link.first.prev = null;
        }
        this.tail = opener.node;
        // The "[" node becomes the link.
        Object.assign(opener.node, link);
        delete opener.node.text;
        if (!opener.image) for (let b = this.brackets; b; b = b.prev) if (!b.image) b.active = false;  // no links in links
        i = dest.end;
        continue;
      }
      if (c === "<") {
        const close = this.nextPlain(">", i + 1);
        if (close !== -1 && close - i <= MAX_URL + 1) {
          const inner = s.slice(i + 1, close);
          const href = /^https?:\/\/[^\s<>]+$/i.test(inner) ? safeHref(inner) : null;
          if (href) {
            flush();
            this.append({ type: "link", href, first: null, last: null, label: inner });
            i = close + 1;
            continue;
          }
        }
        text += c;
        i++;
        continue;
      }
      if ((c === "h" || c === "H") && (i === 0 || !isWordChar(s[i - 1])) &&
          !(i >= 2 && s[i - 1] === "(" && s[i - 2] === "]") && /^https?:\/\//i.test(s.slice(i, i + 8))) {
        let j = i;
        while (j < s.length && j - i < MAX_URL && !isWhite(s[j]) && s[j] !== "<" && s[j] !== ">" && s[j] !== '"') j++;
        const url = trimUrl(s.slice(i, j));
        const href = url.length > 8 ? safeHref(url) : null;
        if (href) {
          flush();
          this.append({ type: "link", href, first: null, last: null, label: url });
          i += url.length;
          continue;
        }
        text += s.slice(i, j);
        i = j;
        continue;
      }
      text += c;
      i++;
    }
    flush();
    this.processEmphasis(null);
    return this.head.next;
  }

  /** CommonMark "process emphasis" above `bottom` (a delimiter, or null for the whole stack). */
  processEmphasis(bottom) {
    // The lowest closer, then openers_bottom per (char, canOpen, length mod 3) so no run is rescanned.
    let closer = this.delims;
    while (closer && closer.prev !== bottom) closer = closer.prev;
    if (!bottom && closer) while (closer.prev) closer = closer.prev;
    if (bottom && closer === null) return;
    const openersBottom = Object.create(null);
    while (closer) {
      if (!closer.canClose) {
        closer = closer.next;
        continue;
      }
      const key = closer.ch + (closer.canOpen ? "1" : "0") + (closer.orig % 3);
      const floor = key in openersBottom ? openersBottom[key] : bottom;
      let opener = closer.prev, found = false;
      while (opener && opener !== floor && opener !== bottom) {
        if (opener.ch === closer.ch && opener.canOpen) {
          const odd = (opener.canClose || closer.canOpen) && (opener.orig + closer.orig) % 3 === 0 &&
                      !(opener.orig % 3 === 0 && closer.orig % 3 === 0);
          const tildeOk = closer.ch !== "~" || opener.n === closer.n;
          if (!odd && tildeOk) {
            found = true;
            break;
          }
        }
        opener = opener.prev;
      }
      if (!found) {
        openersBottom[key] = closer.prev;
        const next = closer.next;
        if (!closer.canOpen) this.removeDelim(closer);
        closer = next;
        continue;
      }
      const use = closer.ch === "~" ? closer.n : closer.n >= 2 && opener.n >= 2 ? 2 : 1;
      opener.n -= use;
      closer.n -= use;
      opener.node.text = opener.node.text.slice(0, opener.n);
      closer.node.text = closer.node.text.slice(0, closer.n);
      const type = closer.ch === "~" ? "del" : use === 2 ? "strong" : "em";
      const wrap = { type, first: opener.node.next, last: closer.node.prev, prev: opener.node, next: closer.node };
      if (wrap.first === closer.node) {
        wrap.first = wrap.last = null;
      } else {
        wrap.first.prev = null;
        wrap.last.next = null;
      }
      opener.node.next = wrap;
      closer.node.prev = wrap;
      // Delimiters between opener and closer can no longer match anything.
      for (let d = closer.prev; d && d !== opener; ) {
        const p = d.prev;
        this.removeDelim(d);
        d = p;
      }
      if (opener.n === 0) {
        this.removeNode(opener.node);
        this.removeDelim(opener);
      }
      if (closer.n === 0) {
        const next = closer.next;
        this.removeNode(closer.node);
        this.removeDelim(closer);
        closer = next;
      }
    }
    // Whatever is left above the bottom stays text.
    while (this.delims && this.delims !== bottom) this.removeDelim(this.delims);
  }

  removeDelim(d) {
    if (d.prev) d.prev.next = d.next;
    if (d.next) d.next.prev = d.prev;
    if (this.delims === d) this.delims = d.prev;
    d.prev = d.next = null;
  }

  removeNode(node) {
    if (node.prev) node.prev.next = node.next;
    if (node.next) node.next.prev = node.prev;
    if (this.tail === node) this.tail = node.prev;
  }
}

/** A bare URL without the sentence punctuation that follows it. */
function trimUrl(url) {
  let end = url.length, open = 0, close = 0;
  for (let i = 0; i < end; i++) {
    if (url[i] === "(") open++;
    else if (url[i] === ")") close++;
  }
  while (end > 0) {
    const last = url[end - 1];
    if (".,;:!?'*_~]".indexOf(last) !== -1) {
      end--;
    } else if (last === ")" && close > open) {
      close--;
      end--;
    } else {
      break;
    }
  }
  return url.slice(0, end);
}

/**
 * The linked list from `first` as plain token arrays, depth-capped: emphasis or links deeper
 * than MAX_DEPTH are flattened into their parent, so rendering never recurses without bound.
 * Iterative, with an explicit stack, for the same reason.
 */
function toTokens(first, depth) {
  const root = [];
  const stack = [{ node: first, out: root, depth }];
  while (stack.length) {
    const top = stack[stack.length - 1];
    const node = top.node;
    if (!node) {
      stack.pop();
      continue;
    }
    top.node = node.next;
    const out = top.out;
    switch (node.type) {
      case "text":
        if (node.text) {
          const last = out[out.length - 1];
          if (last && last.type === "text") last.text += node.text;
          else out.push({ type: "text", text: node.text });
        }
        break;
      case "br":
        out.push({ type: "br" });
        break;
      case "code":
        out.push({ type: "code", text: node.text });
        break;
      case "math":
        out.push({ type: "math", tex: node.tex, display: node.display });
        break;
      case "fnref":
        out.push({ type: "fnref", label: node.label });
        break;
      case "image":
        out.push({ type: "image", href: node.href, alt: node.alt });
        break;
      case "link":
        if (node.label !== undefined && !node.first) {
          out.push({ type: "link", href: node.href, children: [{ type: "text", text: node.label }] });
          break;
        }
      // falls through
      default: {
        // strong / em / del / link with children
        if (top.depth >= MAX_DEPTH || (node.type === "link" && !node.href)) {
          stack.push({ node: node.first, out, depth: top.depth });  // flattened: children only
          break;
        }
        const token = node.type === "link" ? { type: "link", href: node.href, children: [] } : { type: node.type, children: [] };
        out.push(token);
        stack.push({ node: node.first, out: token.children, depth: top.depth + 1 });
      }
    }
  }
  return root;
}

/** The inline tokens of one block's text. */
export function parseInline(text, depth = 0) {
  const s = String(text == null ? "" : text);
  if (!s) return [];
  return toTokens(new Inline(s).parse(), depth);
}

export const limits = Object.freeze({ MAX_DEPTH, MAX_URL, MAX_LABEL, MAX_PARENS, MAX_COLUMNS });
