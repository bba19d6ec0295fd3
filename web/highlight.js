// SPDX-License-Identifier: MIT
/* gloo-stream: light syntax highlighting for code blocks, as tokens (no DOM here).
 *
 *   highlight(code, lang) -> [{kind, text}, ...]   kind: "" (plain) or one of KINDS
 *   languageName(lang)    -> "Python", "JavaScript", ... or "" when unknown
 *
 * One left-to-right scan per block: comments, strings, numbers, keywords, and for HTML tags and
 * attributes. Unclosed strings end at the line's end and unclosed comments at the block's end,
 * so time is linear however the code is broken (web/tests/highlight.test.mjs).
 */

export const KINDS = ["comment", "string", "number", "keyword", "literal", "tag", "attr", "builtin"];
const MAX_HIGHLIGHT = 60000;  // longer blocks are shown plain: colouring them is not worth the time

const words = (s) => new Set(s.split(" "));

const JS = {
  name: "JavaScript",
  line: ["//"], block: [["/*", "*/"]], strings: "'\"`",
  keywords: words("async await break case catch class const continue debugger default delete do else export " +
    "extends finally for from function if import in instanceof let new of return static super switch this throw " +
    "try typeof var void while with yield interface type enum implements private public protected readonly as"),
  literals: words("true false null undefined NaN Infinity"),
  builtins: words("console Math JSON Object Array String Number Promise Map Set Date Error window document"),
};
const LANGS = {
  python: {
    name: "Python", line: ["#"], block: [], strings: "'\"", triple: true,
    keywords: words("and as assert async await break class continue def del elif else except finally for from " +
      "global if import in is lambda nonlocal not or pass raise return try while with yield match case"),
    literals: words("True False None"),
    builtins: words("print len range str int float list dict set tuple open self isinstance enumerate zip super"),
  },
  javascript: JS,
  typescript: Object.assign({}, JS, { name: "TypeScript" }),
  json: { name: "JSON", line: [], block: [], strings: "\"", keywords: new Set(), literals: words("true false null"), builtins: new Set() },
  bash: {
    name: "Bash", line: ["#"], block: [], strings: "'\"", variables: true,
    keywords: words("if then else elif fi for while until do done case esac in function return export local " +
      "echo cd exit set unset source sudo"),
    literals: new Set(), builtins: words("python python3 pip git curl grep sed awk ls cat mkdir rm cp mv apt-get"),
  },
  html: { name: "HTML", line: [], block: [["<!--", "-->"]], strings: "'\"", markup: true,
          keywords: new Set(), literals: new Set(), builtins: new Set() },
  css: {
    name: "CSS", line: [], block: [["/*", "*/"]], strings: "'\"",
    keywords: words("@media @import @font-face @keyframes @supports !important"),
    literals: new Set(), builtins: new Set(), css: true,
  },
  sql: {
    name: "SQL", line: ["--"], block: [["/*", "*/"]], strings: "'\"", caseless: true,
    keywords: words("select from where and or not insert into values update set delete create table drop alter " +
      "index join left right inner outer on group by order having limit offset as distinct union all primary key " +
      "foreign references default unique null is in like between exists case when then else end returning with"),
    literals: words("true false"), builtins: words("count sum avg min max coalesce now"),
  },
};
const ALIASES = {
  py: "python", python3: "python", js: "javascript", jsx: "javascript", mjs: "javascript", cjs: "javascript",
  node: "javascript", ts: "typescript", tsx: "typescript", sh: "bash", shell: "bash", zsh: "bash",
  console: "bash", shellsession: "bash", xml: "html", svg: "html", htm: "html", scss: "css", less: "css",
  postgres: "sql", postgresql: "sql", mysql: "sql", sqlite: "sql", jsonc: "json",
};

// Look-ups keyed by model text never touch the prototype chain: ```constructor or ```__proto__
// is an unknown language, not Object's own members.
const own = (table, key) => (Object.prototype.hasOwnProperty.call(table, key) ? table[key] : undefined);

function spec(lang) {
  const key = String(lang || "").toLowerCase();
  const alias = own(ALIASES, key);
  return own(LANGS, key) || (alias ? own(LANGS, alias) : undefined) || null;
}

/** A human name for the language label of a code block ("" when the block names none we know). */
export function languageName(lang) {
  const found = spec(lang);
  return found ? found.name : "";
}

const isIdentStart = (c) => (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || c === "_" || c === "$" || c === "@";
const isIdent = (c) => isIdentStart(c) || (c >= "0" && c <= "9") || c === "-";
const isDigit = (c) => c >= "0" && c <= "9";

/** The tokens of `code` in `lang`; one plain token when the language is unknown or the code huge. */
export function highlight(code, lang) {
  const text = String(code == null ? "" : code);
  const s = spec(lang);
  if (!s || text.length > MAX_HIGHLIGHT) return text ? [{ kind: "", text }] : [];
  const out = [];
  const push = (kind, piece) => {
    if (!piece) return;
    const last = out[out.length - 1];
    if (last && last.kind === kind) last.text += piece;
    else out.push({ kind, text: piece });
  };
  let i = 0, inTag = false;
  const n = text.length;
  outer: while (i < n) {
    const c = text[i];
    for (const open of s.line) {
      if (text.startsWith(open, i) && (open !== "#" || !s.variables || i === 0 || /\s/.test(text[i - 1]))) {
        let end = text.indexOf("\n", i);
        if (end === -1) end = n;
        push("comment", text.slice(i, end));
        i = end;
        continue outer;
      }
    }
    for (const [open, close] of s.block) {
      if (text.startsWith(open, i)) {
        let end = text.indexOf(close, i + open.length);
        end = end === -1 ? n : end + close.length;
        push("comment", text.slice(i, end));
        i = end;
        continue outer;
      }
    }
    if (s.markup && !inTag && c === "<" && (isIdentStart(text[i + 1]) || text[i + 1] === "/" || text[i + 1] === "!")) {
      let j = i + 1;
      if (text[j] === "/" || text[j] === "!") j++;
      while (j < n && isIdent(text[j])) j++;
      push("tag", text.slice(i, j));
      i = j;
      inTag = true;
      continue;
    }
    if (s.markup && inTag && (c === ">" || (c === "/" && text[i + 1] === ">"))) {
      const len = c === ">" ? 1 : 2;
      push("tag", text.slice(i, i + len));
      i += len;
      inTag = false;
      continue;
    }
    if (s.markup && !inTag) {  // text between tags
      let j = text.indexOf("<", i + 1);
      if (j === -1) j = n;
      push("", text.slice(i, j));
      i = j;
      continue;
    }
    if (s.strings.indexOf(c) !== -1) {
      const triple = s.triple && text.startsWith(c + c + c, i);
      const quote = triple ? c + c + c : c;
      let j = i + quote.length;
      for (;;) {
        if (j >= n) break;
        if (text[j] === "\\") {
          j += 2;
          continue;
        }
        if (text.startsWith(quote, j)) {
          j += quote.length;
          break;
        }
        if (text[j] === "\n" && !triple && c !== "`") break;  // an unclosed string ends with its line
        j++;
      }
      j = Math.min(j, n);
      push("string", text.slice(i, j));
      i = j;
      continue;
    }
    if (s.variables && c === "$" && (isIdentStart(text[i + 1]) || text[i + 1] === "{")) {
      let j = i + 1;
      if (text[j] === "{") {
        // Only a short look ahead: "${${${..." must not search the rest of the block each time.
        const window = text.slice(j, j + 100);
        const close = window.indexOf("}"), nl = window.indexOf("\n");
        j = close === -1 || (nl !== -1 && nl < close) ? j + 1 : j + close + 1;
      } else {
        while (j < n && isIdent(text[j]) && text[j] !== "-") j++;
      }
      push("builtin", text.slice(i, j));
      i = j;
      continue;
    }
    if (isDigit(c) && (i === 0 || !isIdent(text[i - 1]))) {
      let j = i + 1;
      while (j < n && (isIdent(text[j]) || text[j] === ".") && !(text[j] === "." && text[j + 1] === ".")) j++;
      push("number", text.slice(i, j));
      i = j;
      continue;
    }
    if (isIdentStart(c) || (c === "!" && s.css)) {
      let j = i + 1;
      while (j < n && isIdent(text[j]) && !(text[j] === "-" && !s.css && !s.markup && !s.variables)) j++;
      const word = text.slice(i, j);
      const key = s.caseless ? word.toLowerCase() : word;
      let kind = "";
      if (s.markup) kind = "attr";
      else if (s.keywords.has(key)) kind = "keyword";
      else if (s.literals.has(key)) kind = "literal";
      else if (s.builtins.has(key)) kind = "builtin";
      else if (s.css && text[j] === ":" ) kind = "attr";
      push(kind, word);
      i = j;
      continue;
    }
    push("", c);
    i++;
  }
  return out;
}
