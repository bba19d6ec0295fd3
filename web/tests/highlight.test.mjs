// SPDX-License-Identifier: MIT
// node --test web/tests/ : light syntax highlighting (web/highlight.js).
import test from "node:test";
import assert from "node:assert/strict";
import { load, sweep } from "./load.mjs";

const { highlight, languageName } = await load("highlight.js");
const kinds = (code, lang) => highlight(code, lang).filter((t) => t.kind).map((t) => t.kind + ":" + t.text);

test("tokens join back into the code, in every language and on odd input", () => {
  const samples = ["def f(x):\n    return 'a' # c", "const a = `x${y}`; // c\n/* open", "{\"a\": [1, true, null]}",
    "echo \"$HOME\" ${X} # c", "<a href=\"x\">t</a><!-- c", "a { color: red !important; } /* c */",
    "SELECT * FROM t WHERE a = 'x' -- c", "'unclosed\nnext", "\"\"\"doc\nstring\"\"\" + 1"];
  for (const lang of ["python", "js", "ts", "json", "bash", "html", "css", "sql", "unknown", ""]) {
    for (const code of samples) {
      assert.equal(highlight(code, lang).map((t) => t.text).join(""), code, lang + " " + JSON.stringify(code));
    }
  }
});

test("the common languages get keywords, strings, comments and numbers", () => {
  assert.deepEqual(kinds("def f(x):\n    return 'a' # note", "python"),
    ["keyword:def", "keyword:return", "string:'a'", "comment:# note"]);
  assert.deepEqual(kinds("const n = 42; // two", "javascript"), ["keyword:const", "number:42", "comment:// two"]);
  assert.deepEqual(kinds("let s: string = \"x\";", "ts"), ["keyword:let", "string:\"x\""]);
  assert.deepEqual(kinds("{\"a\": 1.5, \"b\": null}", "json"), ["string:\"a\"", "number:1.5", "string:\"b\"", "literal:null"]);
  assert.deepEqual(kinds("if [ -f \"$F\" ]; then echo $HOME; fi # done", "bash"),
    ["keyword:if", "string:\"$F\"", "keyword:then", "keyword:echo", "builtin:$HOME", "keyword:fi", "comment:# done"]);
  assert.deepEqual(kinds("<p class=\"x\">hi</p>", "html"), ["tag:<p", "attr:class", "string:\"x\"", "tag:>", "tag:</p>"]);
  assert.deepEqual(kinds("a { color: red; }", "css"), ["attr:color"]);
  assert.deepEqual(kinds("select id from users where age > 30; -- adults", "sql"),
    ["keyword:select", "keyword:from", "keyword:where", "number:30", "comment:-- adults"]);
  assert.equal(languageName("py"), "Python");
  assert.equal(languageName("tsx"), "TypeScript");
  assert.equal(languageName("brainfuck"), "");
  assert.deepEqual(highlight("x = 1", "brainfuck"), [{ kind: "", text: "x = 1" }]);
});

test("linear time on unclosed strings, comments and markup", async (t) => {
  const cases = {
    "js: unclosed block comments": ["/*".repeat(1), "javascript", (n) => "/*" + "a".repeat(n)],
    "js: quotes": [0, "javascript", (n) => "'\"`".repeat(n / 3)],
    "python: triple quotes": [0, "python", (n) => "\"\"\"a".repeat(n / 4)],
    "bash: ${ without }": [0, "bash", (n) => "${".repeat(n / 2)],
    "html: < without tags": [0, "html", (n) => "<".repeat(n)],
    "html: open tags": [0, "html", (n) => "<a ".repeat(n / 3)],
    "sql: words": [0, "sql", (n) => "select a from b ".repeat(n / 16)],
  };
  for (const [name, [, lang, build]] of Object.entries(cases)) {
    await t.test(name, () => {
      const { small, large, ratio } = sweep(build, (code) => highlight(code, lang), 12000);
      t.diagnostic(`${name}: ${small.toFixed(3)} ms -> ${large.toFixed(3)} ms, x${ratio.toFixed(2)}`);
      assert.ok(ratio < 9, `${name}: x${ratio.toFixed(1)}`);
    });
  }
});

test("a language named like Object's own members is just unknown (#19.4)", () => {
  for (const lang of ["constructor", "__proto__", "toString", "hasOwnProperty", "valueOf"]) {
    assert.equal(languageName(lang), "");
    assert.deepEqual(highlight("x = 1", lang), [{ kind: "", text: "x = 1" }]);
  }
});
