// SPDX-License-Identifier: MIT
// node --test web/tests/ : TeX to MathML trees (web/math.js), and `$` in markdown (web/markdown.js).
import test from "node:test";
import assert from "node:assert/strict";
import { load } from "./load.mjs";

const { texToMath, MATH_TAGS } = await load("math.js");
const md = await load("markdown.js");

/** A tree as compact text: tag(children) or tag"text". */
function show(tree) {
  if (typeof tree.text === "string") return tree.tag + JSON.stringify(tree.text);
  return tree.tag + "(" + tree.children.map(show).join(" ") + ")";
}
const drawn = (tex) => show(texToMath(tex).children[0]);

test("the common subset becomes MathML", () => {
  const cases = [
    ["e^{i\\pi}+1=0", 'mrow(msup(mi"e" mrow(mi"i" mi"π")) mo"+" mn"1" mo"=" mn"0")'],
    ["\\frac{a}{b}", 'mfrac(mi"a" mi"b")'],
    ["\\sqrt{2}", 'msqrt(mn"2")'],
    ["\\sqrt[3]{x}", 'mroot(mi"x" mn"3")'],
    ["x_i^2", 'msubsup(mi"x" mi"i" mn"2")'],
    ["\\sum_{k=1}^{n} k", 'mrow(munderover(mo"∑" mrow(mi"k" mo"=" mn"1") mi"n") mi"k")'],
    ["\\int_0^1 f", 'mrow(msubsup(mo"∫" mn"0" mn"1") mi"f")'],
    ["\\lim_{x \\to 0}", 'munder(mi"lim" mrow(mi"x" mo"→" mn"0"))'],
    ["a \\leq b \\pm c", 'mrow(mi"a" mo"≤" mi"b" mo"±" mi"c")'],
    ["\\alpha\\Omega", 'mrow(mi"α" mi"Ω")'],
    ["\\text{if } x", 'mrow(mtext"if " mi"x")'],
    ["\\left( x \\right)", 'mrow(mo"(" mi"x" mo")")'],
    ["\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}",
     'mrow(mo"(" mtable(mtr(mtd(mn"1") mtd(mn"0")) mtr(mtd(mn"0") mtd(mn"1"))) mo")")'],
    ["f'(x) - 3.5", 'mrow(msup(mi"f" mo"′") mo"(" mi"x" mo")" mo"−" mn"3.5")'],
  ];
  for (const [tex, want] of cases) assert.equal(drawn(tex), want, tex);
  assert.equal(texToMath("x", true).attrs.display, "block");
});

test("outside the subset or malformed: null (shown as code), never half-drawn", () => {
  for (const tex of ["\\href{javascript:x}{y}", "\\frac{a}", "{a", "a}", "x^", "\\begin{align} a \\end{align}",
                     "\\left( x", "\\unknowncommand", "", "   ", "\\text{\\frac{a}{b}}", "a & b", "x".repeat(5000),
                     "{".repeat(100) + "x" + "}".repeat(100)]) {
    assert.equal(texToMath(tex), null, tex.slice(0, 40));
  }
});

test("trees hold only MathML tags and plain text", () => {
  const walk = (tree) => {
    assert.ok(MATH_TAGS.includes(tree.tag), tree.tag);
    for (const key of Object.keys(tree)) assert.ok(["tag", "text", "children", "attrs"].includes(key), key);
    for (const child of tree.children || []) walk(child);
  };
  for (const tex of ["\\frac{\\sqrt{x^2+1}}{\\sum_{i}^{n} i}", "\\begin{cases} 1 & x>0 \\\\ 0 \\end{cases}",
                     "\\lim_{n\\to\\infty} \\left[ 1 + \\frac{1}{n} \\right]^n"]) {
    walk(texToMath(tex));
  }
});

test("dollars in markdown: math only where it is meant, prices stay text", () => {
  const inline = (text) => md.parse(text)[0].inline;
  assert.deepEqual(inline("Euler: $e^{i\\pi}+1=0$ holds."),
    [{ type: "text", text: "Euler: " }, { type: "math", tex: "e^{i\\pi}+1=0", display: false },
     { type: "text", text: " holds." }]);
  assert.deepEqual(inline("It costs $5 and $10 today."), [{ type: "text", text: "It costs $5 and $10 today." }]);
  assert.deepEqual(inline("a \\$x$ b"), [{ type: "text", text: "a $x$ b" }]);
  assert.deepEqual(inline("$$x^2$$"), [{ type: "math", tex: "x^2", display: true }]);
  assert.deepEqual(inline("`$x$` is code"), [{ type: "code", text: "$x$" }, { type: "text", text: " is code" }]);
  assert.deepEqual(md.parse("Text\n$$\n\\frac{1}{2}\n$$\nafter"),
    [{ type: "paragraph", inline: [{ type: "text", text: "Text" }] },
     { type: "math", tex: "\\frac{1}{2}", display: true, closed: true },
     { type: "paragraph", inline: [{ type: "text", text: "after" }] }]);
  assert.equal(md.parse("$$\nx").at(-1).closed, false);  // still being written: shown as code
});

test("many dollars are linear (each closer is looked at once)", () => {
  const text = "$a ".repeat(20000);
  const blocks = md.parse(text);
  assert.equal(blocks[0].inline.length, 1);
  assert.equal(blocks[0].inline[0].type, "text");
});
