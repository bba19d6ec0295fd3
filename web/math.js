// SPDX-License-Identifier: MIT
/* gloo-stream: the common subset of TeX math as MathML trees (browsers draw MathML themselves).
 *
 *   texToMath(tex) -> {tag, children | text, attrs} | null
 *
 * Fractions (\frac, \dfrac, \tfrac), roots (\sqrt, \sqrt[n]), sub- and superscripts, Greek
 * letters, the usual operators, relations and arrows, \sum \prod \int with limits, function names
 * (\sin, \log, \lim...), \text{...}, \left( \right), spaces, and matrices (matrix, pmatrix,
 * bmatrix, vmatrix, cases). One pass over the text, bounded in length and depth. Anything else
 * (an unknown command, a brace that does not close) gives null: the caller shows the TeX as code,
 * never half-drawn markup. The trees hold only the tags in MATH_TAGS and plain text.
 */

export const MATH_TAGS = Object.freeze(["math", "mrow", "mi", "mn", "mo", "msup", "msub", "msubsup", "mfrac",
  "msqrt", "mroot", "mtext", "mspace", "mtable", "mtr", "mtd", "munderover", "munder", "mover"]);

const MAX_TEX = 4000;
const MAX_DEPTH = 24;

const own = (table, key) => Object.prototype.hasOwnProperty.call(table, key);

const GREEK = {
  alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ϵ", varepsilon: "ε", zeta: "ζ", eta: "η",
  theta: "θ", vartheta: "ϑ", iota: "ι", kappa: "κ", lambda: "λ", mu: "μ", nu: "ν", xi: "ξ", pi: "π",
  varpi: "ϖ", rho: "ρ", sigma: "σ", varsigma: "ς", tau: "τ", upsilon: "υ", phi: "ϕ", varphi: "φ",
  chi: "χ", psi: "ψ", omega: "ω", Gamma: "Γ", Delta: "Δ", Theta: "Θ", Lambda: "Λ", Xi: "Ξ", Pi: "Π",
  Sigma: "Σ", Upsilon: "Υ", Phi: "Φ", Psi: "Ψ", Omega: "Ω",
};
const SYMBOLS = {
  pm: "±", mp: "∓", times: "×", div: "÷", cdot: "⋅", ast: "∗", star: "⋆", circ: "∘", bullet: "∙",
  leq: "≤", le: "≤", geq: "≥", ge: "≥", neq: "≠", ne: "≠", approx: "≈", equiv: "≡", sim: "∼", simeq: "≃",
  cong: "≅", propto: "∝", ll: "≪", gg: "≫", in: "∈", notin: "∉", ni: "∋", subset: "⊂", supset: "⊃",
  subseteq: "⊆", supseteq: "⊇", cup: "∪", cap: "∩", setminus: "∖", emptyset: "∅", forall: "∀",
  exists: "∃", neg: "¬", land: "∧", lor: "∨", wedge: "∧", vee: "∨", to: "→", rightarrow: "→",
  leftarrow: "←", Rightarrow: "⇒", Leftarrow: "⇐", leftrightarrow: "↔", Leftrightarrow: "⇔",
  implies: "⟹", iff: "⟺", mapsto: "↦", infty: "∞", partial: "∂", nabla: "∇", angle: "∠",
  perp: "⊥", parallel: "∥", ldots: "…", cdots: "⋯", vdots: "⋮", ddots: "⋱", prime: "′", degree: "°",
  langle: "⟨", rangle: "⟩", lfloor: "⌊", rfloor: "⌋", lceil: "⌈", rceil: "⌉", hbar: "ℏ", ell: "ℓ",
  Re: "ℜ", Im: "ℑ", aleph: "ℵ", "{": "{", "}": "}", "|": "‖", "%": "%", "$": "$", "#": "#", "&": "&", "_": "_",
};
const IDENTIFIERS = new Set(["hbar", "ell", "Re", "Im", "aleph", "emptyset", "infty", "partial", "nabla"]);
const BIG = { sum: "∑", prod: "∏", coprod: "∐", int: "∫", iint: "∬", iiint: "∭", oint: "∮",
  bigcup: "⋃", bigcap: "⋂" };
const FUNCTIONS = new Set(["sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh",
  "cosh", "tanh", "log", "ln", "lg", "exp", "lim", "liminf", "limsup", "max", "min", "sup", "inf", "det",
  "gcd", "deg", "dim", "ker", "arg", "Pr", "mod"]);
const LIMIT_FUNCTIONS = new Set(["lim", "liminf", "limsup", "max", "min", "sup", "inf"]);
const SPACES = { ",": "0.17em", ":": "0.22em", ";": "0.28em", " ": "0.25em", quad: "1em", qquad: "2em" };
const MATRICES = { matrix: ["", ""], pmatrix: ["(", ")"], bmatrix: ["[", "]"], Bmatrix: ["{", "}"],
  vmatrix: ["|", "|"], Vmatrix: ["‖", "‖"], cases: ["{", ""] };
const OPERATORS = "+-=<>()[]|/,;:!?'.*";

class Unsupported extends Error {}

const node = (tag, children, attrs) => (attrs ? { tag, children, attrs } : { tag, children });
const leaf = (tag, text, attrs) => (attrs ? { tag, text, attrs } : { tag, text });
const row = (items) => (items.length === 1 ? items[0] : node("mrow", items));

/** The tokens of `tex`: commands (`\name` or `\` and one character), and single characters. */
function tokenize(tex) {
  const tokens = [];
  let i = 0;
  while (i < tex.length) {
    const c = tex[i];
    if (c === "\\") {
      let j = i + 1;
      while (j < tex.length && /[A-Za-z]/.test(tex[j])) j++;
      if (j === i + 1) j = Math.min(tex.length, i + 2);  // \, \{ \\ ...
      tokens.push({ command: tex.slice(i + 1, j) });
      i = j;
    } else if (/\s/.test(c)) {
      if (!tokens.length || !tokens[tokens.length - 1].space) tokens.push({ space: true });  // kept for \text
      i++;
    } else if (/[0-9]/.test(c)) {
      let j = i + 1;
      while (j < tex.length && /[0-9.]/.test(tex[j])) j++;
      tokens.push({ number: tex.slice(i, j) });
      i = j;
    } else {
      const code = tex.codePointAt(i);
      const ch = String.fromCodePoint(code);
      tokens.push({ char: ch });
      i += ch.length;
    }
  }
  return tokens;
}

class Parser {
  constructor(tokens) {
    this.tokens = tokens;
    this.pos = 0;
    this.depth = 0;
  }

  peek() {
    while (this.tokens[this.pos] && this.tokens[this.pos].space) this.pos++;
    return this.tokens[this.pos];
  }

  next() {
    this.peek();
    return this.tokens[this.pos++];
  }

  /** Items until `}`, `&`, `\\`, `\right`, `\end` or the end (not consumed). */
  expression() {
    if (++this.depth > MAX_DEPTH) throw new Unsupported("too deep");
    const items = [];
    for (;;) {
      const t = this.peek();
      if (!t || t.char === "}" || t.char === "&" || t.command === "\\" || t.command === "right" ||
          t.command === "end") break;
      items.push(this.scripted());
    }
    this.depth--;
    return items;
  }

  /** A group `{...}`, or one atom, as the argument of a command or a script. */
  argument() {
    const t = this.peek();
    if (!t) throw new Unsupported("missing argument");
    if (t.char === "{") {
      this.next();
      const items = this.expression();
      if (!this.peek() || this.next().char !== "}") throw new Unsupported("unclosed brace");
      return row(items.length ? items : [node("mrow", [])]);
    }
    if (t.char === "}" || t.char === "^" || t.char === "_") throw new Unsupported("missing argument");
    return this.atom();
  }

  scripted() {
    let base = this.atom();
    let sub = null, sup = null;
    for (;;) {
      const t = this.peek();
      if (t && t.char === "^" && !sup) {
        this.next();
        sup = this.argument();
      } else if (t && t.char === "_" && !sub) {
        this.next();
        sub = this.argument();
      } else if (t && t.char === "'" && !sup) {
        this.next();
        sup = leaf("mo", "′");
      } else {
        break;
      }
    }
    if (!sub && !sup) return base;
    const limits = Boolean(base.limits);
    if ("limits" in base) {
      const { limits: _, ...plain } = base;
      base = plain;
    }
    if (sub && sup) return node(limits ? "munderover" : "msubsup", [base, sub, sup]);
    if (sub) return node(limits ? "munder" : "msub", [base, sub]);
    return node(limits ? "mover" : "msup", [base, sup]);
  }

  atom() {
    const t = this.next();
    if (!t) throw new Unsupported("unexpected end");
    if (t.number !== undefined) return leaf("mn", t.number);
    if (t.char !== undefined) {
      const c = t.char;
      if (c === "{") {
        this.pos--;
        return this.argument();
      }
      if (c === "}" || c === "^" || c === "_" || c === "&" || c === "#" || c === "%" || c === "~") {
        throw new Unsupported("stray " + c);
      }
      if (/\p{L}/u.test(c)) return leaf("mi", c);
      if (OPERATORS.includes(c)) return leaf("mo", c === "-" ? "−" : c === "*" ? "∗" : c);
      return leaf("mo", c);
    }
    return this.command(t.command);
  }

  command(name) {
    if (own(GREEK, name)) return leaf("mi", GREEK[name]);
    if (own(SYMBOLS, name)) return leaf(IDENTIFIERS.has(name) ? "mi" : "mo", SYMBOLS[name]);
    if (own(BIG, name)) {
      const op = leaf("mo", BIG[name]);
      op.limits = !name.includes("int");  // integrals take their limits as scripts
      return op;
    }
    if (FUNCTIONS.has(name)) {
      const fn = leaf("mi", name, { mathvariant: "normal" });
      if (LIMIT_FUNCTIONS.has(name)) fn.limits = true;
      return fn;
    }
    if (own(SPACES, name)) return { tag: "mspace", children: [], attrs: { width: SPACES[name] } };
    switch (name) {
      case "frac": case "dfrac": case "tfrac": case "binom": {
        const top = this.argument();
        const bottom = this.argument();
        if (name === "binom") {
          return row([leaf("mo", "("), node("mfrac", [top, bottom], { linethickness: "0" }), leaf("mo", ")")]);
        }
        return node("mfrac", [top, bottom]);
      }
      case "sqrt": {
        const t = this.peek();
        if (t && t.char === "[") {
          this.next();
          const index = [];
          while (this.peek() && this.peek().char !== "]") index.push(this.scripted());
          if (!this.peek()) throw new Unsupported("unclosed [");
          this.next();
          return node("mroot", [this.argument(), row(index.length ? index : [node("mrow", [])])]);
        }
        return node("msqrt", [this.argument()]);
      }
      case "text": case "textrm": case "mathrm": case "operatorname": {
        const text = this.rawGroup();
        return name === "text" || name === "textrm" ? leaf("mtext", text) : leaf("mi", text, { mathvariant: "normal" });
      }
      case "mathbf": case "mathit": case "mathbb": case "mathcal": {
        const variant = { mathbf: "bold", mathit: "italic", mathbb: "double-struck", mathcal: "script" }[name];
        return leaf("mi", this.rawGroup(), { mathvariant: variant });
      }
      case "left": case "bigl": case "Bigl": case "big": case "Big": {
        const open = this.delimiter();
        if (name !== "left") return open;
        const inner = this.expression();
        const t = this.next();
        if (!t || t.command !== "right") throw new Unsupported("\\left without \\right");
        return node("mrow", [open, ...inner, this.delimiter()]);
      }
      case "bigr": case "Bigr":
        return this.delimiter();
      case "begin":
        return this.environment();
      default:
        throw new Unsupported("\\" + name);
    }
  }

  /** `{letters and spaces}` as they are (for \text and font commands). */
  rawGroup() {
    const t = this.next();
    if (!t || t.char !== "{") throw new Unsupported("expected {");
    let text = "";
    for (;;) {
      const u = this.tokens[this.pos++];  // spaces too: they are part of the text
      if (!u) throw new Unsupported("unclosed brace");
      if (u.space) {
        text += " ";
        continue;
      }
      if (u.char === "}") break;
      if (u.char === "{") throw new Unsupported("nested group in text");
      text += u.number !== undefined ? u.number : u.char !== undefined ? u.char :
        own(SYMBOLS, u.command) ? SYMBOLS[u.command] : u.command === " " ? " " : "";
      if (u.command !== undefined && !own(SYMBOLS, u.command) && u.command !== " ") throw new Unsupported("command in text");
    }
    return text;
  }

  delimiter() {
    const t = this.next();
    if (!t) throw new Unsupported("missing delimiter");
    if (t.char === ".") return node("mrow", []);
    const text = t.char !== undefined ? t.char : own(SYMBOLS, t.command) ? SYMBOLS[t.command] : null;
    if (text === null || !"()[]{}|‖⟨⟩⌊⌋⌈⌉/".includes(text)) throw new Unsupported("delimiter");
    return leaf("mo", text);
  }

  environment() {
    const kind = this.rawGroup();
    if (!own(MATRICES, kind)) throw new Unsupported("\\begin{" + kind + "}");
    const rows = [];
    let cells = [];
    for (;;) {
      cells.push(node("mtd", this.expression()));
      const t = this.next();
      if (!t) throw new Unsupported("\\begin without \\end");
      if (t.char === "&") continue;
      if (t.command === "\\") {
        rows.push(node("mtr", cells));
        cells = [];
        continue;
      }
      if (t.command === "end") {
        if (this.rawGroup() !== kind) throw new Unsupported("mismatched \\end");
        break;
      }
      throw new Unsupported("unexpected " + (t.char || t.command));
    }
    if (cells.length > 1 || cells[0].children.length) rows.push(node("mtr", cells));
    if (rows.length > 100) throw new Unsupported("too many rows");
    const table = node("mtable", rows, kind === "cases" ? { columnalign: "left" } : undefined);
    const [open, close] = MATRICES[kind];
    const items = [];
    if (open) items.push(leaf("mo", open));
    items.push(table);
    if (close) items.push(leaf("mo", close));
    return node("mrow", items);
  }
}

/** `tex` as a MathML tree (`display` for a block of its own), or null when it is outside the subset. */
export function texToMath(tex, display = false) {
  if (typeof tex !== "string" || !tex.trim() || tex.length > MAX_TEX) return null;
  try {
    const parser = new Parser(tokenize(tex));
    const items = parser.expression();
    if (parser.peek() !== undefined) return null;  // a stray } or & or \right
    return node("math", [row(items)], display ? { display: "block" } : undefined);
  } catch (e) {
    if (e instanceof Unsupported || e instanceof RangeError) return null;
    throw e;
  }
}
