// SPDX-License-Identifier: MIT
/* gloo-stream: markdown tokens (markdown.js) to elements, and the view of an answer as it streams.
 *
 *   renderMarkdown(text)         -> DocumentFragment of the whole text
 *   new AnswerView(element)      .update(text) while streaming, .finish(text) at the end
 *
 * Only createElement/textContent: the model's text never becomes markup. Elements made here:
 * H1-H6 P STRONG EM DEL CODE PRE OL UL LI A BR HR BLOCKQUOTE TABLE THEAD TBODY TR TH TD SUP SPAN
 * DIV, BUTTON (copy a code block), a disabled checkbox INPUT (task lists), and the MathML of
 * math.js's MATH_TAGS (math with display, mi with mathvariant, ...). Attributes: href
 * (absolute http/https only, from safeHref), rel, target, title, class, start, type, disabled,
 * checked, aria-label.
 */
import { parse, parseIncremental } from "./markdown.js";
import { highlight, languageName } from "./highlight.js";
import { texToMath } from "./math.js";

const MATHML = "http://www.w3.org/1998/Math/MathML";
const MATH_ATTRIBUTES = ["display", "mathvariant", "width", "linethickness", "columnalign"];

/** A MathML tree from math.js as elements (createElementNS and textContent only). */
function mathElement(tree) {
  const node = document.createElementNS(MATHML, tree.tag);
  for (const name of MATH_ATTRIBUTES) {
    if (tree.attrs && typeof tree.attrs[name] === "string") node.setAttribute(name, tree.attrs[name]);
  }
  if (typeof tree.text === "string") node.textContent = tree.text;
  else for (const child of tree.children || []) node.appendChild(mathElement(child));
  return node;
}

/** TeX drawn as MathML, or (outside the subset, or unfinished) shown as it was written, as code. */
function math(tex, display, closed = true) {
  const tree = closed ? texToMath(tex, display) : null;
  if (tree) return mathElement(tree);
  const code = el("code", "math-source");
  code.textContent = display ? "$$" + tex + "$$" : "$" + tex + "$";
  return code;
}

const IMAGE_NOTE = "Images are not loaded here: the page's security policy blocks remote images. " +
  "Open the link to see it.";

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function link(href) {
  const a = el("a");
  a.setAttribute("href", href);
  a.setAttribute("rel", "noopener noreferrer");
  a.setAttribute("target", "_blank");
  return a;
}

/** Inline tokens into `parent`; inside a link, links and images become their words (no nested A). */
function appendInline(tokens, parent, inLink = false) {
  for (const t of tokens) {
    switch (t.type) {
      case "text":
        parent.appendChild(document.createTextNode(t.text));
        break;
      case "br":
        parent.appendChild(el("br"));
        break;
      case "code": {
        const code = el("code");
        code.textContent = t.text;
        parent.appendChild(code);
        break;
      }
      case "math":
        parent.appendChild(math(t.tex, t.display));
        break;
      case "strong":
      case "em":
      case "del": {
        const node = el(t.type);
        appendInline(t.children, node, inLink);
        parent.appendChild(node);
        break;
      }
      case "link": {
        if (inLink) {
          appendInline(t.children, parent, true);
          break;
        }
        const a = link(t.href);
        appendInline(t.children, a, true);
        if (!a.firstChild) a.textContent = t.href;
        parent.appendChild(a);
        break;
      }
      case "image": {
        const label = "Image" + (t.alt ? ": " + t.alt : "");
        if (t.href && !inLink) {
          const a = link(t.href);
          a.className = "md-image";
          a.setAttribute("title", IMAGE_NOTE);
          a.textContent = label;
          const note = el("span", "md-image-note");
          note.textContent = " (not shown: this page loads no remote images)";
          parent.append(a, note);
        } else {
          const span = el("span", "md-image");
          span.textContent = "[" + label + "]";
          parent.appendChild(span);
        }
        break;
      }
      case "fnref": {
        const sup = el("sup", "fnref");
        sup.textContent = "[" + t.label + "]";
        parent.appendChild(sup);
        break;
      }
      default:
        break;
    }
  }
}

// Direction controls reorder what the eye sees ("Trojan Source"): in code they are shown as marks.
export const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

function appendShowingBidi(target, text) {
  let at = 0;
  for (const match of text.matchAll(BIDI_CONTROLS)) {
    if (match.index > at) target.appendChild(document.createTextNode(text.slice(at, match.index)));
    const hex = match[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
    const mark = el("span", "bidi-mark");
    mark.textContent = "<U+" + hex + ">";
    mark.title = "A hidden direction control (U+" + hex + "): it can make code read differently from what runs";
    target.appendChild(mark);
    at = match.index + match[0].length;
  }
  if (at < text.length) target.appendChild(document.createTextNode(text.slice(at)));
}

function codeBlock(block) {
  const box = el("div", "code-block");
  const head = el("div", "code-head");
  const label = el("span", "code-lang");
  label.textContent = languageName(block.lang) || block.lang || "text";
  const copy = el("button", "copy-code");
  copy.type = "button";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", "Copy the " + label.textContent + " code");
  head.append(label, copy);
  const pre = el("pre");
  const code = el("code");
  if (block.lang) code.className = "language-" + block.lang;
  for (const token of highlight(block.text, block.lang)) {
    const target = token.kind ? code.appendChild(el("span", "tok-" + token.kind)) : code;
    appendShowingBidi(target, token.text);
  }
  code.rawText = block.text;  // what Copy copies: the code as it came (the marks are only shown)
  pre.appendChild(code);
  box.append(head, pre);
  return box;
}

function table(block) {
  const wrap = el("div", "table-wrap");
  const t = el("table");
  const cell = (tag, tokens, c) => {
    const node = el(tag, block.align[c] ? "align-" + block.align[c] : "");
    appendInline(tokens, node);
    return node;
  };
  const thead = el("thead");
  const headRow = el("tr");
  block.head.forEach((tokens, c) => headRow.appendChild(cell("th", tokens, c)));
  thead.appendChild(headRow);
  t.appendChild(thead);
  if (block.rows.length) {
    const tbody = el("tbody");
    for (const row of block.rows) tbody.appendChild(tableRow(row, block.align));
    t.appendChild(tbody);
  }
  wrap.appendChild(t);
  return wrap;
}

function tableRow(row, align) {
  const tr = el("tr");
  row.forEach((tokens, c) => {
    const td = el("td", align[c] ? "align-" + align[c] : "");
    appendInline(tokens, td);
    tr.appendChild(td);
  });
  return tr;
}

/** One list item; a task item marks its list as a task list. */
function listItem(item, loose, list) {
  const li = el("li");
  if (item.task !== null) {
    li.className = "task";
    list.classList.add("task-list");
    const box = el("input");
    box.type = "checkbox";
    box.disabled = true;
    box.checked = item.task;
    box.setAttribute("aria-label", item.task ? "done" : "not done");
    li.appendChild(box);
  }
  appendBlocks(item.children, li, !loose);
  return li;
}

/** One block's element. In a tight list item, paragraphs are inline (no P). */
function blockElement(block, tight) {
  switch (block.type) {
    case "paragraph": {
      const p = el("p");
      appendInline(block.inline, p);
      return p;
    }
    case "heading": {
      const h = el("h" + block.level);
      appendInline(block.inline, h);
      return h;
    }
    case "code":
      return codeBlock(block);
    case "math": {
      const box = el("div", "math-block");
      box.appendChild(math(block.tex, true, block.closed));
      return box;
    }
    case "hr":
      return el("hr");
    case "blockquote": {
      const q = el("blockquote");
      appendBlocks(block.children, q, false);
      return q;
    }
    case "footnote": {
      const box = el("div", "footnote");
      const label = el("sup", "footnote-label");
      label.textContent = block.label;
      box.appendChild(label);
      appendBlocks(block.children, box, true);
      return box;
    }
    case "list": {
      const list = el(block.ordered ? "ol" : "ul");
      if (block.ordered && block.start !== 1) list.setAttribute("start", String(block.start));
      for (const item of block.items) list.appendChild(listItem(item, block.loose, list));
      return list;
    }
    case "table":
      return table(block);
    default:
      return null;
  }
}

function appendBlocks(blocks, parent, tight) {
  let inlineBefore = false;
  for (const block of blocks) {
    if (tight && block.type === "paragraph") {
      if (inlineBefore) parent.appendChild(el("br"));
      appendInline(block.inline, parent);
      inlineBefore = true;
      continue;
    }
    const node = blockElement(block, tight);
    if (node) parent.appendChild(node);
    inlineBefore = false;
  }
}

/** The whole of `text` as elements; footnotes at the end, in a DIV of their own, wherever they were
 * defined (as people expect to read them). */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const blocks = parse(text);
  appendBlocks(blocks.filter((b) => b.type !== "footnote"), fragment, false);
  const notes = blocks.filter((b) => b.type === "footnote");
  if (notes.length) {
    const box = el("div", "footnotes");
    appendBlocks(notes, box, false);
    fragment.appendChild(box);
  }
  return fragment;
}

/** Where the blinking cursor goes: the end of the last block that holds text. */
function cursorHost(root) {
  let host = root;
  for (;;) {
    const last = host.lastElementChild;
    if (!last || host.lastChild !== last || !/^(P|H[1-6]|UL|OL|LI|PRE|CODE|BLOCKQUOTE|DIV|TABLE|TBODY|THEAD|TR|TD|TH)$/.test(last.nodeName)) {
      return host;
    }
    if (last.classList.contains("code-head")) return host;
    host = last;
  }
}

/**
 * An answer being written: blocks that can no longer change are rendered once and kept; only the
 * open block (usually the last paragraph, list or code block) is rendered again on each update.
 * A long list or table is split by the parser (parseIncremental): its finished items and rows are
 * added once to the list or table on screen, and only its last item or rows are rendered again.
 */
export class AnswerView {
  constructor(element) {
    this.element = element;
    this.offset = 0;      // characters of the text already rendered as finished blocks
    this.carry = null;    // what the parser needs to go on with a split list or table
    this.open = null;     // that list or table on screen: {node (the OL/UL or TBODY), loose, items}
    this.live = [];       // the elements of the open blocks (rendered again on each update)
    this.cursor = null;
    this.notes = null;    // the footnotes, kept after everything else (as renderMarkdown puts them)
    element.replaceChildren();
  }

  /** Show `text` (the whole answer so far); `streaming` adds the cursor. */
  update(text, streaming = true) {
    const step = parseIncremental(text.slice(this.offset), this.carry);
    for (const node of this.live) node.remove();
    if (this.cursor) this.cursor.remove();
    this.live = [];
    const done = document.createDocumentFragment();
    for (const block of step.done) this.place(block, done, false);
    this.element.insertBefore(done, this.notes);
    this.offset += step.doneLength;
    this.carry = step.carry;
    const open = document.createDocumentFragment();
    let inside = null;  // the last item or row added to the split list or table, when it is open
    for (const block of step.open) inside = this.place(block, open, true) || inside;
    this.live.push(...Array.from(open.childNodes));
    if (streaming) {
      if (!this.cursor) {
        this.cursor = el("span", "cursor");
        this.cursor.setAttribute("aria-hidden", "true");
      }
      const host = open.childNodes.length ? cursorHost(open) : inside ? cursorHost(this.open.node) : open;
      host.appendChild(this.cursor);
      if (host === open) this.live.push(this.cursor);
    }
    this.element.insertBefore(open, this.notes);
  }

  /** Put one block on screen; returns the last node it added inside the split list or table, if any. */
  place(block, parent, live) {
    const split = this.open;
    if (block.continued && split && split.kind === block.type) {
      let last = null;
      if (block.type === "list") {
        if (block.loose && !split.loose) this.loosen(split);
        for (const item of block.items) {
          last = split.node.appendChild(listItem(item, split.loose, split.node));
          if (live) this.live.push(last);
          else split.items.push(item);
        }
      } else {
        for (const row of block.rows) {
          last = split.node.appendChild(tableRow(row, block.align));
          if (live) this.live.push(last);
        }
      }
      if (!live && !block.more) this.open = null;  // the list or table has ended
      return last;
    }
    const node = blockElement(block, false);
    if (node && block.type === "footnote") {
      if (!this.notes) this.notes = this.element.appendChild(el("div", "footnotes"));
      this.notes.appendChild(node);
      if (live) this.live.push(node);
      return null;
    }
    if (node) parent.appendChild(node);
    if (!live) {
      const kind = block.type;
      this.open = node && block.more ? { kind, node: kind === "list" ? node : node.querySelector("tbody"),
                                         loose: block.loose, items: kind === "list" ? block.items.slice() : null }
        : null;
    }
    return null;
  }

  /** A split list turned out loose (a blank line between later items): its finished items again, loose. */
  loosen(split) {
    split.loose = true;
    const finished = split.items.map((item) => listItem(item, true, split.node));
    for (const node of Array.from(split.node.children)) if (!this.live.includes(node)) node.remove();
    split.node.prepend(...finished);
  }

  /** The final rendering: the open blocks once more, without the cursor. */
  finish(text) {
    this.update(text, false);
    if (this.cursor) this.cursor.remove();
  }
}
