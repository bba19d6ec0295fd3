// SPDX-License-Identifier: MIT
// node --test web/tests/ : the markdown parser (web/markdown.js) on vectors and adversarial sizes.
import test from "node:test";
import assert from "node:assert/strict";
import { load, sweep } from "./load.mjs";

const md = await load("markdown.js");
const RATIO_LIMIT = 9;  // the brief: 4x the input must cost well under 10x the time  // linear work grows ~4x for 4x the input; quadratic ~16x

// A compact rendering of tokens, so vectors read like markup.
function show(blocks) {
  return blocks.map(block).join("");
}
function block(b) {
  switch (b.type) {
    case "paragraph": return "<p>" + inl(b.inline) + "</p>";
    case "heading": return `<h${b.level}>` + inl(b.inline) + `</h${b.level}>`;
    case "code": return `<pre${b.lang ? " " + b.lang : ""}${b.closed ? "" : " open"}>` + b.text + "</pre>";
    case "hr": return "<hr>";
    case "blockquote": return "<bq>" + show(b.children) + "</bq>";
    case "footnote": return `<fn ${b.label}>` + show(b.children) + "</fn>";
    case "list": {
      const tag = b.ordered ? "ol" : "ul";
      const attrs = (b.ordered && b.start !== 1 ? ` start=${b.start}` : "") + (b.loose ? " loose" : "");
      return `<${tag}${attrs}>` + b.items.map((it) =>
        "<li>" + (it.task === null ? "" : it.task ? "[x]" : "[ ]") + show(it.children) + "</li>").join("") + `</${tag}>`;
    }
    case "table":
      return "<table " + b.align.map((a) => a || "-").join(",") + ">" +
        "<tr>" + b.head.map((c) => "<th>" + inl(c) + "</th>").join("") + "</tr>" +
        b.rows.map((r) => "<tr>" + r.map((c) => "<td>" + inl(c) + "</td>").join("") + "</tr>").join("") + "</table>";
    default: return "<?" + b.type + ">";
  }
}
function inl(tokens) {
  return tokens.map((t) => {
    switch (t.type) {
      case "text": return t.text;
      case "code": return "<code>" + t.text + "</code>";
      case "br": return "<br>";
      case "strong": case "em": case "del": return `<${t.type}>` + inl(t.children) + `</${t.type}>`;
      case "link": return `<a ${t.href}>` + inl(t.children) + "</a>";
      case "image": return `<img ${t.href} ${t.alt}>`;
      case "fnref": return `<sup ${t.label}>`;
      default: return "<?" + t.type + ">";
    }
  }).join("");
}

const VECTORS = [
  ["# Title", "<h1>Title</h1>"],
  ["## Sub ##", "<h2>Sub</h2>"],
  ["###### six", "<h6>six</h6>"],
  ["####### seven", "<p>####### seven</p>"],
  ["#hashtag", "<p>#hashtag</p>"],
  ["Title\n===", "<h1>Title</h1>"],
  ["a **b** *c* `d` __e__ _f_ ~~g~~", "<p>a <strong>b</strong> <em>c</em> <code>d</code> <strong>e</strong> <em>f</em> <del>g</del></p>"],
  ["***both***", "<p><em><strong>both</strong></em></p>"],
  ["**a *b* c**", "<p><strong>a <em>b</em> c</strong></p>"],
  ["**unclosed", "<p>**unclosed</p>"],
  ["`unclosed", "<p>`unclosed</p>"],
  ["``a ` b``", "<p><code>a ` b</code></p>"],
  ["[half](https://exa", "<p>[half](https://exa</p>"],
  ["snake_case_name and 2 * 3 * 4", "<p>snake_case_name and 2 * 3 * 4</p>"],
  ["a ~~~not del~~~", "<p>a ~~~not del~~~</p>"],
  ["```py\nx = 1", "<pre py open>x = 1</pre>"],
  ["```\n<b>x</b>\n```\nafter", "<pre><b>x</b></pre><p>after</p>"],
  ["```bad lang\"<x>\ny\n```", "<pre bad>y</pre>"],
  ["~~~\n```\n~~~", "<pre>```</pre>"],
  ["1. a\n2. b", "<ol><li><p>a</p></li><li><p>b</p></li></ol>"],
  ["3. c\n4. d", "<ol start=3><li><p>c</p></li><li><p>d</p></li></ol>"],
  ["- a\n- b\n\ntext", "<ul><li><p>a</p></li><li><p>b</p></li></ul><p>text</p>"],
  ["- a\n\n- b", "<ul loose><li><p>a</p></li><li><p>b</p></li></ul>"],
  ["- a\n  - b\n- c", "<ul><li><p>a</p><ul><li><p>b</p></li></ul></li><li><p>c</p></li></ul>"],
  ["1. one\n   - sub", "<ol><li><p>one</p><ul><li><p>sub</p></li></ul></li></ol>"],
  ["Steps:\n1. a", "<p>Steps:</p><ol><li><p>a</p></li></ol>"],
  ["- [ ] todo\n- [x] done\n- [X] also", "<ul><li>[ ]<p>todo</p></li><li>[x]<p>done</p></li><li>[x]<p>also</p></li></ul>"],
  ["- [link](https://e.com)", "<ul><li><p><a https://e.com/>link</a></p></li></ul>"],
  ["line1\nline2", "<p>line1<br>line2</p>"],
  ["para1\n\npara2", "<p>para1</p><p>para2</p>"],
  ["---", "<hr>"],
  ["a\n\n***\n\nb", "<p>a</p><hr><p>b</p>"],
  ["> quote\n> > nested\n> back", "<bq><p>quote</p><bq><p>nested<br>back</p></bq></bq>"],
  ["> lazy\ncontinued", "<bq><p>lazy<br>continued</p></bq>"],
  ["| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |\n| x |", "<table left,center,right><tr><th>a</th><th>b</th><th>c</th></tr><tr><td>1</td><td>2</td><td>3</td></tr><tr><td>x</td><td></td><td></td></tr></table>"],
  ["a | b\n--- | ---\n`c\\|d` | **e**", "<table -,-><tr><th>a</th><th>b</th></tr><tr><td><code>c|d</code></td><td><strong>e</strong></td></tr></table>"],
  ["| a |\n| --- |\n| b |\n\nafter", "<table -><tr><th>a</th></tr><tr><td>b</td></tr></table><p>after</p>"],
  ["| a | b |\n| --- |", "<p>| a | b |<br>| --- |</p>"],
  ["Text[^1] more[^note].\n\n[^1]: The first.\n[^note]: Second.", "<p>Text<sup 1> more<sup note>.</p><fn 1><p>The first.</p></fn><fn note><p>Second.</p></fn>"],
  ["![a cat](https://e.com/cat.png)", "<p><img https://e.com/cat.png a cat></p>"],
  ["![x](javascript:alert(1))", "<p><img null x></p>"],
  ["[x](https://e.com/a_b)", "<p><a https://e.com/a_b>x</a></p>"],
  ["[x](http://e.com \"title\")", "<p><a http://e.com/>x</a></p>"],
  ["[x](<https://e.com/a b>)", "<p><a https://e.com/a%20b>x</a></p>"],
  ["[**b**](https://e.com)", "<p><a https://e.com/><strong>b</strong></a></p>"],
  ["[a [b](https://x.y)](https://z.w)", "<p>[a <a https://x.y/>b</a>](https://z.w)</p>"],
  ["<https://e.com>", "<p><a https://e.com/>https://e.com</a></p>"],
  ["see https://e.com/x.", "<p>see <a https://e.com/x>https://e.com/x</a>.</p>"],
  ["(see https://e.com/a_(b))", "<p>(see <a https://e.com/a_(b)>https://e.com/a_(b)</a>)</p>"],
  ["[x](javascript:alert(1))", "<p>x</p>"],
  ["[x](JaVaScRiPt:alert(1))", "<p>x</p>"],
  ["[x](data:text/html,hi)", "<p>x</p>"],
  ["[x](/relative)", "<p>x</p>"],
  ["<script>alert(1)</script>", "<p><script>alert(1)</script></p>"],
  ["\\*not em\\*", "<p>*not em*</p>"],
  ["", ""],
  ["a\r\nb\rc", "<p>a<br>b<br>c</p>"],
  ["#" + " ".repeat(30) + "\u2028", "<h1>\u2028</h1>"],
];

test("markdown vectors", async (t) => {
  for (const [source, expected] of VECTORS) {
    await t.test(JSON.stringify(source).slice(0, 60), () => {
      assert.equal(show(md.parse(source)), expected);
    });
  }
});

test("only http(s) links get an href", () => {
  for (const bad of ["javascript:alert(1)", "data:text/html,x", "/relative", "//host/x", "vbscript:x", "https://a b",
                     "http://x\u0000y", "https://" + "a".repeat(3000)]) {
    assert.equal(md.safeHref(bad), null, bad.slice(0, 40));
  }
  assert.equal(md.safeHref("https://e.com/a?b=1#c"), "https://e.com/a?b=1#c");
});

test("incremental parsing gives the same blocks as parsing the whole text, at every length", () => {
  const doc = "# Head\n\nIntro with **bold** and a [link](https://e.com).\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n" +
    "- one\n- two\n\n  still two\n\n> quote\n> more\n\n```js\nconst x = 1;\n```\n\nSetext\n---\n\n1. a\n2. b\n\nEnd[^1]\n\n[^1]: note";
  const want = JSON.stringify(md.parse(doc));
  for (let cut = 0; cut <= doc.length; cut++) {
    // Stream the prefix: whatever is done is kept, and only the rest is parsed again, as the page does.
    let done = [], offset = 0, carry = null;
    for (const end of [Math.floor(cut / 3), Math.floor(cut / 2), cut]) {
      if (end < offset) continue;
      const step = md.parseIncremental(doc.slice(offset, end), carry);
      done = done.concat(step.done);
      offset += step.doneLength;
      carry = step.carry;
    }
    const finalStep = md.parseIncremental(doc.slice(offset, cut), carry);
    const got = JSON.stringify(md.joinBlocks(done.concat(finalStep.done, finalStep.open)));
    assert.equal(got, JSON.stringify(md.parse(doc.slice(0, cut))), "prefix " + cut);
  }
  const whole = md.parseIncremental(doc);
  assert.equal(JSON.stringify(md.joinBlocks(whole.done.concat(whole.open))), want);
  assert.ok(whole.done.length >= 8, "finished blocks are reported done");
});

test("a long open list or table is split: its finished items and rows are done, and never parsed again", () => {
  const list = Array.from({ length: 200 }, (_, i) => (i + 1) + ". item **" + i + "**").join("\n");
  const table = "| n | x |\n|---|:-:|\n" + Array.from({ length: 200 }, (_, i) => "| " + i + " | x" + i + " |").join("\n");
  for (const [name, doc] of [["list", list + "\n\n- loose later\n\n- after"], ["table", table + "\n\nend"]]) {
    // Streamed in 40-character steps, as the page does: the text parsed each time stays short.
    let done = [], offset = 0, carry = null, longest = 0;
    for (let end = 40; end < doc.length + 40; end += 40) {
      const piece = doc.slice(offset, Math.min(end, doc.length));
      longest = Math.max(longest, piece.length);
      const step = md.parseIncremental(piece, carry);
      done = done.concat(step.done);
      offset += step.doneLength;
      carry = step.carry;
    }
    const last = md.parseIncremental(doc.slice(offset), carry);
    assert.ok(longest < 200, name + ": at most a few lines are parsed again (" + longest + " characters)");
    assert.equal(JSON.stringify(md.joinBlocks(done.concat(last.done, last.open))), JSON.stringify(md.parse(doc)), name);
    assert.ok(done.filter((b) => b.more).length > 10, name + ": reported done piece by piece");
  }
});

test("random input never throws and always yields tokens", () => {
  const pieces = ["*", "**", "_", "~~", "`", "```", "[", "]", "(", ")", "](", "![", "<", ">", "<https://a.b/>", "|",
    "|---|", "\n", "\n\n", "# ", "- ", "1. ", "> ", "[^", "]:", "\\", "\"", "'", "https://e.com/a", " ", "\t",
    "word", "\u2028", "\u0000", "😀", "- [ ] ", "---"];
  let seed = 20240611;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (let n = 0; n < 3000; n++) {
    let text = "";
    const length = 1 + Math.floor(random() * 30);
    for (let k = 0; k < length; k++) text += pieces[Math.floor(random() * pieces.length)];
    assert.ok(Array.isArray(md.parse(text)), JSON.stringify(text));
    const inc = md.parseIncremental(text);
    const rest = md.parseIncremental(text.slice(inc.doneLength), inc.carry);
    assert.equal(JSON.stringify(md.joinBlocks(inc.done.concat(rest.done, rest.open))), JSON.stringify(md.parse(text)),
                 JSON.stringify(text));
  }
});

// Inputs that froze the old renderer (super-linear regexes) and others built to defeat a naive parser.
const ADVERSARIAL = {
  "heading: # + spaces + U+2028": (n) => "#" + " ".repeat(n) + "\u2028",
  "heading: # + spaces + x": (n) => "#" + " ".repeat(n) + "x",
  "list: - + spaces + U+2028": (n) => "-" + " ".repeat(n) + "\u2028",
  "list: 1. + tabs + U+2028": (n) => "1." + "\t".repeat(n) + "\u2028",
  "list: nested indents": (n) => Array.from({ length: n / 20 }, (_, k) => " ".repeat(k % 200) + "- a").join("\n"),
  "fence: ``` + spaces + U+2028": (n) => "```" + " ".repeat(n) + "\u2028\nx",
  "fence: many openers": (n) => "```\n~~~\n".repeat(n / 8),
  "fence: backticks in info": (n) => "```" + "`a".repeat(n / 2),
  "link title: [a](b \"": (n) => "[a](b \"".repeat(n / 7),
  "link title: [a](b '": (n) => "[a](b '".repeat(n / 7),
  "link: [a](<": (n) => "[a](<".repeat(n / 5),
  "link: [a]((": (n) => "[a](" + "(".repeat(n),
  "link: escaped parens": (n) => "[a](b\\(".repeat(n / 7),
  "link: brackets": (n) => "[".repeat(n / 2) + "]".repeat(n / 2),
  "link: ](": (n) => "](".repeat(n / 2),
  "images: ![": (n) => "![".repeat(n / 2),
  "emphasis: *a ": (n) => "*a ".repeat(n / 3),
  "emphasis: _b": (n) => " _b".repeat(n / 3),
  "emphasis: nested": (n) => "*a ".repeat(n / 6) + "b* ".repeat(n / 6),
  "emphasis: ** runs": (n) => "**a".repeat(n / 3),
  "emphasis: mixed": (n) => "*_~~".repeat(n / 4) + "x",
  "code spans: growing runs": (n) => { let s = ""; for (let k = 1; s.length < n; k++) s += "`".repeat(k % 300) + "a"; return s; },
  "autolink: <http://": (n) => "<http://".repeat(n / 8),
  "autolink: <": (n) => "<".repeat(n),
  "bare url: http://(": (n) => "http://" + "(".repeat(n),
  "bare urls": (n) => "http://a.b/ ".repeat(n / 12),
  "footnote refs: [^": (n) => "[^".repeat(n / 2),
  "blockquote: > nesting": (n) => ">".repeat(n),
  "blockquote: lines": (n) => "> > > a\n".repeat(n / 8),
  "table: pipes": (n) => "|".repeat(n) + "\n|-|\n",
  "table: rows": (n) => "| a | b |\n|---|---|\n" + "| 1 | 2 |\n".repeat(n / 10),
  "escapes": (n) => "\\".repeat(n),
  "spaces then text": (n) => " ".repeat(n) + "x",
  "blank lines": (n) => "\n".repeat(n),
  "setext candidates": (n) => "a\n-\n".repeat(n / 4),
};

test("every construct takes linear time (4x the input, well under 10x the time)", async (t) => {
  const n = 10000;
  for (const [name, build] of Object.entries(ADVERSARIAL)) {
    await t.test(name, () => {
      const { small, large, ratio } = sweep(build, (text) => md.parse(text), n);
      t.diagnostic(`${name}: ${small.toFixed(3)} ms -> ${large.toFixed(3)} ms, x${ratio.toFixed(2)}`);
      assert.ok(ratio < RATIO_LIMIT, `${name}: ${small.toFixed(1)} ms for n, ${large.toFixed(1)} ms for 4n (x${ratio.toFixed(1)})`);
      assert.ok(large < 2000, `${name}: ${large.toFixed(0)} ms for ${4 * n} characters`);
    });
  }
});

test("incremental parsing of a growing answer stays linear per step", () => {
  const unit = "Some **bold** text with `code` and a [link](https://e.com).\n\n- item one\n- item two\n\n";
  const { ratio } = sweep((n) => unit.repeat(Math.ceil(n / unit.length)), (text) => md.parseIncremental(text), 16000);
  assert.ok(ratio < RATIO_LIMIT, `x${ratio.toFixed(1)}`);
});

test("the inputs that froze the old renderer for seconds now take milliseconds", () => {
  const known = {
    "heading: # + 3000 spaces + U+2028": "#" + " ".repeat(3000) + "\u2028",
    "list: - + 3000 spaces + U+2028": "-" + " ".repeat(3000) + "\u2028",
    "list: 1. + 3000 tabs and spaces + U+2028": "1." + " \t".repeat(1500) + "\u2028",
    "fence: ``` + 3000 spaces + backtick": "```" + " ".repeat(3000) + "`\n",
    "fence: ``` + 3000 spaces + U+2028": "```" + " ".repeat(3000) + "\u2028\ncode",
    "link titles: 3000 unclosed": "[a](b \"".repeat(3000),
    "link destinations: 3000 unclosed": "[a](<".repeat(3000),
    "paragraph: trailing spaces then U+2028": "a" + " ".repeat(3000) + "\u2028" + " ".repeat(3000) + "b",
  };
  for (const [name, text] of Object.entries(known)) {
    const started = process.hrtime.bigint();
    md.parse(text);
    md.parseIncremental(text);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    assert.ok(ms < 250, `${name}: ${ms.toFixed(1)} ms`);
  }
});
