// SPDX-License-Identifier: MIT
/* gloo-stream: the chat page.
 *
 * POSTs the conversation to the proxy's /api/stream (same origin), reads the event stream with
 * fetch + ReadableStream + sse.js, and shows the answer with render.js, which renders finished
 * blocks once and only the open block again (once per animation frame, however fast reads come).
 * Conversations live in localStorage (store.js). The model's text only ever reaches the page
 * through render.js (createElement/textContent); this file never assigns HTML either.
 */
import { createParser } from "./sse.js";
import { AnswerView, BIDI_CONTROLS, renderMarkdown } from "./render.js";
import { safeHref } from "./markdown.js";
import { CHATS_KEY, CONVERSATION_FORMAT, ChatStore } from "./store.js";

const STREAM_URL = "/api/stream";
const HEALTH_URL = "/health";
const MODELS_URL = "/v1/models";  // the relay's list: `auto` and the upstream's model catalog
const KEY_STORAGE = "glooStream.apiKey";
// Silence before the "still waiting" note: index.html's <meta name="gloo-wait-note-ms">, else 4 s.
const WAIT_NOTE_MS = Number(document.querySelector('meta[name="gloo-wait-note-ms"]')?.content) || 4000;
const MAX_SOURCES = 12;
const SOURCES_LIMIT = 5;     // how many sources a grounded answer asks for (Gloo allows 1-10)
const MAX_IMAGE_BYTES = 4 * 1024 * 1024;   // an attached image, before base64
const MAX_IMAGES = 4;                       // generated images shown per answer
// The only images the page shows: PNG, JPEG or WebP data URLs that come from the answer itself.
const IMAGE_DATA = /^data:image\/(png|jpeg|webp);base64,([A-Za-z0-9+/]+={0,2})$/;
const IMAGE_MAGIC = { png: "iVBORw0KGgo", jpeg: "/9j/", webp: "UklGR" };

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("composer"), prompt: $("prompt"), sendBtn: $("sendBtn"), newBtn: $("newBtn"),
  chatsBtn: $("chatsBtn"), chatPanel: $("chatPanel"), chatList: $("chatList"), chatEmpty: $("chatEmpty"),
  chatBusy: $("chatBusy"), undoBar: $("undoBar"), undoText: $("undoText"), undoBtn: $("undoBtn"),
  chatSearch: $("chatSearch"), exportMd: $("exportMd"), exportJson: $("exportJson"), importInput: $("importInput"),
  starters: $("starters"), instructions: $("instructions"), systemPrompt: $("systemPrompt"),
  instructionsPreview: $("instructionsPreview"), defaultInstructions: $("defaultInstructions"),
  instructionsNote: $("instructionsNote"), theme: $("theme"),
  status: $("status"), meta: $("meta"), intro: $("intro"), turns: $("turns"), jumpBtn: $("jumpBtn"),
  modelFamily: $("modelFamily"), tradition: $("tradition"), grounded: $("grounded"), apiKeyRow: $("apiKeyRow"), apiKey: $("apiKey"),
  simBadge: $("simBadge"), hint: $("promptHint"), api: $("api"), responseModel: $("responseModel"),
  drawing: $("drawing"), imageInput: $("imageInput"), attached: $("attached"),
};

function localStore() {
  try {
    return window.localStorage;
  } catch (e) {
    return null;  // storage disabled: conversations last as long as the page
  }
}

const store = new ChatStore(localStore());
// A touch keyboard: Enter adds a line there, and the Send button sends.
const touch = Boolean(window.matchMedia) && (window.matchMedia("(pointer: coarse)").matches ||
  (navigator.maxTouchPoints > 0 && window.matchMedia("(hover: none)").matches));

const state = {
  chat: store.current(),   // {id, title, created, updated, turns: [{q, a, model, sources, error, outcome, stats}]}
  run: null,               // the answer being streamed (see startRun)
  controller: null,
  editing: null,           // the index of the question being edited
  follow: true,            // keep the latest text in view (false once the reader scrolls up)
  attachment: null,        // {name, url}: an image for the next question (the Responses API)
  // The largest image to attach: what fits, in base64, in the relay's request body (/health says).
  maxImageBytes: 700 * 1024,
  maxBodyBytes: 1048576,  // the relay's PROXY_MAX_BODY_BYTES, from /health
  undo: null,             // {chat, wasCurrent, timer}: the conversation deleted a moment ago
};

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

const now = () => performance.now();

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(className, text, label) {
  const b = el("button", className, text);
  b.type = "button";
  if (label) b.setAttribute("aria-label", label);
  return b;
}

function setStatus(text, kind) {
  ui.status.textContent = text;
  ui.status.className = "status" + (kind ? " is-" + kind : "");
}

const plural = (n, word) => n + " " + word + (n === 1 ? "" : "s");

/** The figures of a run: "N tokens", "X ms", and once content came, first token and tokens/s. */
function runStats(run) {
  const end = run.finished === null ? now() : run.finished;
  const ms = Math.max(0, Math.round(end - run.started));
  const parts = [plural(run.tokens, "token"), ms + " ms"];
  if (run.firstToken !== null) {
    parts.push("first token " + Math.round(run.firstToken - run.started) + " ms");
    if (ms > 0 && run.tokens > 0) parts.push((run.tokens / (ms / 1000)).toFixed(1) + " tokens/s");
  }
  const cost = run.verdict && run.verdict.cost_usd;
  if (typeof cost === "number" && Number.isFinite(cost) && cost >= 0) parts.push(formatCost(cost));
  return parts;
}

/** A cost in US dollars with enough digits to say something: "$0.0012", "$1.25", "< $0.000001". */
function formatCost(usd) {
  if (usd === 0) return "$0";
  if (usd < 0.000001) return "< $0.000001";
  return "$" + (usd >= 0.01 ? usd.toFixed(usd >= 100 ? 0 : 2) : usd.toPrecision(2).replace(/0+$/, ""));
}

/** `target` as "a • b • c", each figure kept whole when the line wraps on a narrow screen. */
function fillMeta(target, parts) {
  target.replaceChildren();
  parts.forEach((text, i) => {
    if (i > 0) target.appendChild(document.createTextNode(" \u2022 "));
    target.appendChild(el("span", "meta-part", text));
  });
}

function nearBottom() {
  const doc = document.documentElement;
  return window.innerHeight + window.scrollY >= doc.scrollHeight - 120;
}

function scrollToEnd() {
  window.scrollTo(0, document.documentElement.scrollHeight);
}

async function copyText(text, feedback) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch (e) {
    // No clipboard API (an insecure origin, or permission refused): the old way.
    const area = el("textarea", "visually-hidden");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    try {
      ok = document.execCommand("copy");
    } catch (e2) {
      ok = false;
    }
    area.remove();
  }
  if (feedback) {
    const before = feedback.dataset.label || feedback.textContent;
    feedback.dataset.label = before;
    feedback.textContent = ok ? "Copied" : "Copy failed";
    feedback.classList.toggle("is-done", ok);
    setTimeout(() => {
      feedback.textContent = before;
      feedback.classList.remove("is-done");
    }, 1500);
  }
  return ok;
}

// ---------------------------------------------------------------------------
// Errors in plain words
// ---------------------------------------------------------------------------

/** A message fit for people, or "" when it is missing or phrased for operators. */
function plainMessage(raw) {
  let text = "";
  if (typeof raw === "string") text = raw;
  else if (raw && typeof raw === "object") {
    if (typeof raw.message === "string") text = raw.message;
    else if (typeof raw.error === "string") text = raw.error;
    else if (typeof raw.detail === "string") text = raw.detail;
    else if (Array.isArray(raw.detail) && raw.detail[0] && typeof raw.detail[0].msg === "string") text = raw.detail[0].msg;
  }
  // "the upstream answered 500: <Gloo's words>": Gloo's words are what a person needs.
  const relayed = /^the upstream answered \d{3}: (.+)$/i.exec(text.trim());
  if (relayed) text = relayed[1];
  text = text.replace(/\s*\(\d{3}\)\s*$/, "").trim();  // the status is not repeated in the words
  if (!text || /\bupstream\b|Traceback|Exception|Error\(/i.test(text) || text.length > 400) return "";
  return text.charAt(0).toUpperCase() + text.slice(1);
}

const sentence = (text) => (/[.!?]$/.test(text) ? text : text + ".");

/** A question (with the conversation before it) longer than the relay takes, in words a person reads. */
function tooLong() {
  const characters = Math.max(1000, Math.floor((state.maxBodyBytes - 4096) / 1000) * 1000);
  return "This is too long to send: the question and the conversation before it can be about " +
    characters.toLocaleString("en-US") + " characters at most. Shorten the question, or start a new chat.";
}

/** The words for a failed answer before the stream: the server's own message when it has one. */
function describeStatus(status, body, headers) {
  let parsed = null;
  try {
    parsed = JSON.parse(body);
  } catch (e) {
    parsed = null;
  }
  const own = parsed ? plainMessage(parsed.error !== undefined ? parsed.error : parsed) : "";
  if (status === 401) {
    return ui.apiKey.value
      ? "The API key was not accepted. Check the key and send again."
      : "This proxy needs an API key. Enter it in the API key field and send again.";
  }
  if (status === 429) {
    const wait = parseInt(headers.get("Retry-After") || "", 10);
    return sentence(own || "Too many requests right now") + (wait > 0 ? " Try again in " + plural(wait, "second") + "." : " Try again in a moment.");
  }
  if (status === 413) return tooLong();
  if (own) return sentence(own);
  if (status === 504 || status === 408) return "The AI service took too long to answer. Try again.";
  if (status === 503) return "The server is busy right now. Try again in a moment.";
  if (status >= 500) return "The AI service could not answer right now. Try again in a moment.";
  if (status === 403) return "This request is not allowed.";
  return "The request was not accepted (status " + status + ").";
}

/** The words for an error event in the stream (the relay's {"error": {...}} or Gloo's error object). */
function describeStreamError(error) {
  const own = plainMessage(error);
  if (own) return sentence(own);
  const type = error && typeof error === "object" ? String(error.type || error.name || "") : "";
  if (/timeout/i.test(type)) return "The AI service stopped sending before the answer finished. Try again.";
  if (/disconnect/i.test(type)) return "The connection was lost before the answer finished.";
  return "The model's provider failed before the answer finished. Try again.";
}

// ---------------------------------------------------------------------------
// Turns on screen
// ---------------------------------------------------------------------------

/** The sources of a grounded answer: http(s) links only, from `citations` or `sources`. */
function readSources(chunk) {
  const list = Array.isArray(chunk.citations) ? chunk.citations : Array.isArray(chunk.sources) ? chunk.sources : null;
  if (!list) return null;
  const out = [];
  const seen = new Set();
  for (const item of list) {
    if (!item || typeof item !== "object") continue;
    const raw = [item.url, item.link, item.uri].find((v) => typeof v === "string");
    const href = raw ? safeHref(raw.trim()) : null;
    if (!href || seen.has(href)) continue;
    seen.add(href);
    const title = [item.title, item.name].find((v) => typeof v === "string" && v.trim());
    const publisher = typeof item.publisher === "string" ? item.publisher : "";
    out.push({ href, title: (title || href).trim().slice(0, 300), publisher: publisher.trim().slice(0, 120) });
    if (out.length >= MAX_SOURCES) break;
  }
  return out;
}

function turnElement(index) {
  return ui.turns.querySelector('.turn[data-index="' + index + '"]');
}

/** A turn's article: question (with Edit), an error line (with Retry), the answer and its actions. */
function buildTurn(turn, index) {
  const article = el("article", "turn");
  article.dataset.index = String(index);
  article.setAttribute("aria-label", "Question " + (index + 1) + " and its answer");

  const question = el("div", "question");
  const qHead = el("div", "question-head");
  const versions = el("span", "versions");
  versions.append(button("ver-prev button-link", "\u2039", "The previous version of this exchange"),
                  el("span", "ver-count"), button("ver-next button-link", "\u203a", "The next version of this exchange"));
  qHead.append(el("p", "speaker", "You"), versions,
               button("edit-btn button-link", "Edit", "Edit this question and send it again"));
  question.append(qHead, el("p", "question-text", turn.q));
  const attached = safeImage(turn.image);
  if (attached) {
    const img = el("img", "question-image");
    img.setAttribute("src", attached);
    img.setAttribute("alt", "The image sent with this question");
    question.appendChild(img);
  }

  const error = el("div", "turn-error");
  error.setAttribute("role", "alert");
  error.append(el("p", "error-text"), button("retry-btn button-secondary", "Retry", "Send this question again"));
  error.hidden = true;

  const answerBlock = el("div", "answer-block");
  const answer = el("div", "answer markdown");
  answer.setAttribute("aria-label", "Answer");
  const waiting = el("p", "waiting", "");
  waiting.setAttribute("role", "status");
  waiting.hidden = true;
  const sources = el("div", "sources");
  sources.hidden = true;
  const foot = el("div", "answer-foot");
  const actions = el("div", "answer-actions");
  actions.append(button("copy-answer button-link", "Copy", "Copy the answer"),
                 button("regen-btn button-link", "Regenerate", "Write this answer again"));
  foot.append(el("p", "turn-meta"), actions);
  const reasoning = el("details", "reasoning");
  reasoning.append(el("summary", "", "Reasoning"), el("p", "reasoning-text"));
  reasoning.hidden = true;
  const images = el("div", "answer-images");
  images.hidden = true;
  answerBlock.append(el("p", "speaker", "Answer"), reasoning, answer, images, waiting, sources, foot);

  article.append(question, answerBlock, error);  // the partial answer first, what went wrong under it
  fillTurn(article, turn, index);
  return article;
}

/** Everything of a finished (or stored) turn that is not the streaming text. */
function fillTurn(article, turn, index, rendered = false) {
  const last = index === state.chat.turns.length - 1;
  const answer = article.querySelector(".answer");
  if (!rendered && turn.a) answer.replaceChildren(renderMarkdown(turn.a));
  else if (!rendered) answer.replaceChildren();
  const error = article.querySelector(".turn-error");
  error.hidden = !turn.error;
  article.querySelector(".error-text").textContent = turn.error || "";
  article.querySelector(".retry-btn").hidden = !last;
  article.querySelector(".answer-block").hidden = !turn.a;
  article.querySelector(".answer-block").classList.toggle("is-empty", !turn.a);
  fillSources(article.querySelector(".sources"), turn.sources);
  fillReasoning(article, turn.reasoning || "", null);
  fillImages(article.querySelector(".answer-images"), turn.images || []);
  const hasImages = Boolean(turn.images && turn.images.length);
  if (hasImages) article.querySelector(".answer-block").hidden = false;
  const meta = [];
  if (turn.model) meta.push("answered by " + turn.model);
  if (turn.outcome && turn.outcome !== "Done") meta.push(turn.outcome);
  fillMeta(article.querySelector(".turn-meta"), meta.concat(turn.stats || []));
  article.querySelector(".copy-answer").hidden = !turn.a;
  article.querySelector(".regen-btn").hidden = !last || !turn.a;
  article.querySelector(".answer-foot").hidden = !turn.a && !meta.length;
  article.querySelector(".waiting").hidden = true;
  article.querySelector(".question-text").textContent = turn.q;
  const count = Array.isArray(turn.versions) ? turn.versions.length : 0;
  const versions = article.querySelector(".versions");
  versions.hidden = count < 2;
  if (count >= 2) {
    versions.querySelector(".ver-count").textContent = (turn.v + 1) + "/" + count;
    versions.querySelector(".ver-prev").disabled = turn.v <= 0;
    versions.querySelector(".ver-next").disabled = turn.v >= count - 1;
  }
}

/** The reasoning summary; `open` true or false opens or closes it, null leaves it as the reader left it. */
function fillReasoning(article, text, open) {
  const box = article.querySelector(".reasoning");
  box.hidden = !text;
  box.querySelector(".reasoning-text").textContent = text;
  if (text && open !== null) box.open = open;
}

function fillImages(box, images) {
  box.replaceChildren();
  for (const url of images) {
    const safe = safeImage(url);
    if (!safe) continue;
    const img = el("img", "answer-image");
    img.setAttribute("src", safe);
    img.setAttribute("alt", "An image the model made");
    box.appendChild(img);
  }
  box.hidden = !box.children.length;
}

function fillSources(box, sources) {
  box.replaceChildren();
  box.hidden = !(sources && sources.length);
  if (box.hidden) return;
  box.appendChild(el("p", "sources-title", "Sources"));
  const list = el("ol", "sources-list");
  for (const source of sources) {
    const href = safeHref(source.href);
    if (!href) continue;
    const li = el("li");
    const a = el("a", "", source.title || href);
    a.setAttribute("href", href);
    a.setAttribute("rel", "noopener noreferrer");
    a.setAttribute("target", "_blank");
    li.appendChild(a);
    if (source.publisher) li.appendChild(el("span", "source-publisher", " \u2014 " + source.publisher));
    list.appendChild(li);
  }
  box.appendChild(list);
}

/** The whole conversation on screen, from state.chat. */
function renderChat() {
  showInstructions();
  ui.turns.replaceChildren();
  state.chat.turns.forEach((turn, i) => ui.turns.appendChild(buildTurn(turn, i)));
  ui.intro.hidden = state.chat.turns.length > 0;
  markCurrent();
  renderChatList();
}

/** The latest question and answer keep the ids #question and #output (for tests and skip links). */
function markCurrent() {
  for (const old of ui.turns.querySelectorAll("#output, #question")) old.removeAttribute("id");
  const last = ui.turns.lastElementChild;
  if (!last) return;
  last.querySelector(".answer").id = "output";
  last.querySelector(".question-text").id = "question";
  last.querySelector(".answer").setAttribute("aria-live", "polite");
  for (const a of ui.turns.querySelectorAll(".answer:not(#output)")) a.removeAttribute("aria-live");
  // Only the last answer can be regenerated or retried.
  ui.turns.querySelectorAll(".turn").forEach((article, i, all) => {
    const isLast = i === all.length - 1;
    const turn = state.chat.turns[i];
    article.querySelector(".regen-btn").hidden = !isLast || !turn || !turn.a;
    article.querySelector(".retry-btn").hidden = !isLast;
  });
}

// ---------------------------------------------------------------------------
// The conversation list
// ---------------------------------------------------------------------------

function renderChatList() {
  const chats = store.list();
  ui.chatList.replaceChildren();
  ui.chatEmpty.hidden = chats.length > 0;
  const query = ui.chatSearch.value.trim().toLowerCase();
  const shown = query ? chats.filter((chat) => chatText(chat).includes(query)) : chats;
  if (query && !shown.length) ui.chatList.appendChild(el("li", "chat-empty", "No conversation holds \u201c" +
                                                         ui.chatSearch.value.trim() + "\u201d."));
  for (const chat of shown) {
    const li = el("li", "chat-item");
    const open = button("chat-open", "");
    open.dataset.id = chat.id;
    open.appendChild(el("span", "chat-title", chat.title || "Untitled"));
    open.appendChild(el("span", "chat-date", new Date(chat.updated).toLocaleString([], {
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" })));
    if (chat.id === state.chat.id) open.setAttribute("aria-current", "true");
    else if (state.controller) open.disabled = true;  // see #chatBusy: stop the answer first
    const rename = button("chat-rename", "\u270e", "Rename the conversation \u201c" + (chat.title || "Untitled") + "\u201d");
    rename.dataset.id = chat.id;
    const del = button("chat-delete", "\u00d7", "Delete the conversation \u201c" + (chat.title || "Untitled") + "\u201d");
    del.dataset.id = chat.id;
    li.append(open, rename, del);
    ui.chatList.appendChild(li);
  }
  ui.chatBusy.hidden = !state.controller || chats.length < 2;
  ui.chatsBtn.textContent = "Chats" + (chats.length ? " (" + chats.length + ")" : "");
}

function toggleChats(open) {
  const show = open === undefined ? ui.chatPanel.hidden : open;
  ui.chatPanel.hidden = !show;
  ui.chatsBtn.setAttribute("aria-expanded", String(show));
  if (show) renderChatList();
}

function switchChat(id) {
  if (state.controller) return;
  const chat = store.get(id);
  if (!chat) return;
  state.chat = chat;
  store.setCurrent(id);
  cancelEdit();
  renderChat();
  setStatus("Ready", "");
  ui.meta.replaceChildren();
  toggleChats(false);
  scrollToEnd();
  ui.prompt.focus();
}

/** Everything a search looks in: the title, the questions, the answers and the instructions, lower case. */
function chatText(chat) {
  const parts = [chat.title || "", chat.system || ""];
  for (const turn of chat.turns || []) parts.push(turn.q || "", turn.a || "");
  return parts.join("\n").toLowerCase();
}

/** Rename in place: the title becomes a field; Enter keeps it, Escape or leaving it as it was cancels. */
function renameChat(id) {
  const chat = id === state.chat.id ? state.chat : store.get(id);
  const item = ui.chatList.querySelector('.chat-open[data-id="' + id + '"]');
  if (!chat || !item) return;
  const field = el("input", "chat-search");
  field.value = chat.title || "";
  field.setAttribute("aria-label", "New name for the conversation");
  field.maxLength = 200;
  item.replaceWith(field);
  field.focus();
  field.select();
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    const title = field.value.trim().replace(/\s+/g, " ");
    if (keep && title && title !== chat.title) {
      chat.title = title;
      chat.updated = Date.now();
      store.save(chat);
    }
    renderChatList();
  };
  field.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    else if (event.key === "Escape") {
      event.stopPropagation();
      finish(false);
    }
  });
  field.addEventListener("blur", () => finish(true));
}

// ---------------------------------------------------------------------------
// Instructions, export and import
// ---------------------------------------------------------------------------

/** The conversation's instructions (its system message) at the top, collapsed, with a preview. */
function showInstructions() {
  const system = state.chat.system || "";
  ui.systemPrompt.value = system;
  ui.instructionsPreview.textContent = system ? "\u2014 " + system.replace(/\s+/g, " ").slice(0, 60) +
    (system.length > 60 ? "\u2026" : "") : "(none)";
  ui.instructionsNote.textContent = "";
}

function conversationRecord(chat) {
  return { format: CONVERSATION_FORMAT, version: 1, id: chat.id, title: chat.title || "", created: chat.created,
           updated: chat.updated, system: chat.system || null,
           turns: chat.turns.map((t) => ({ q: t.q, a: t.a || "", model: t.model || null, error: t.error || null,
                                           outcome: t.outcome || null, sources: t.sources || [] })) };
}

function conversationMarkdown(chat) {
  const lines = ["# " + (chat.title || "Untitled"), ""];
  if (chat.system) lines.push("> **Instructions:** " + chat.system.replace(/\n/g, "\n> "), "");
  for (const turn of chat.turns) {
    lines.push("**You:** " + turn.q, "", "**Answer:**" + (turn.model ? " (" + turn.model + ")" : ""), "", turn.a || "");
    if (turn.error) lines.push("", "_" + turn.error + "_");
    for (const source of turn.sources || []) lines.push("- [" + (source.title || source.href) + "](" + source.href + ")");
    lines.push("", "---", "");
  }
  return lines.join("\n");
}

/** Save `text` as a file named after the conversation. */
function download(text, type, extension) {
  const name = ((state.chat.title || "conversation").replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-|-$/g, "")
    .slice(0, 60) || "conversation") + "." + extension;
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function exportChat(kind) {
  if (!state.chat.turns.length) {
    setStatus("This conversation has nothing to export yet.", "error");
    return;
  }
  if (kind === "json") download(JSON.stringify(conversationRecord(state.chat), null, 1), "application/json", "json");
  else download(conversationMarkdown(state.chat), "text/markdown", "md");
}

function importChat(file) {
  if (!file || state.controller) return;
  file.text().then((textContent) => {
    let record = null;
    try {
      record = JSON.parse(textContent);
    } catch (e) {
      record = null;
    }
    const chat = store.importChat(record);
    if (!chat) {
      setStatus("That file is not an exported conversation (" + CONVERSATION_FORMAT + " JSON).", "error");
      return;
    }
    state.chat = chat;
    renderChat();
    toggleChats(false);
    setStatus("Imported \u201c" + (chat.title || "Untitled") + "\u201d.", "done");
    scrollToEnd();
  }).catch(() => setStatus("That file could not be read.", "error"));
  ui.importInput.value = "";
}

const UNDO_MS = 10000;  // how long a deleted conversation can be brought back

function deleteChat(id) {
  if (state.controller && id === state.chat.id) return;
  const chat = store.get(id);
  const wasCurrent = id === state.chat.id;
  store.remove(id);
  if (wasCurrent) {
    state.chat = store.current();
    renderChat();
  }
  renderChatList();
  if (!chat) return;
  if (state.undo) clearTimeout(state.undo.timer);
  state.undo = { chat, wasCurrent, timer: setTimeout(forgetUndo, UNDO_MS) };
  ui.undoText.textContent = "Deleted \u201c" + (chat.title || "Untitled") + "\u201d.";
  ui.undoBar.hidden = false;
}

function forgetUndo() {
  if (state.undo) clearTimeout(state.undo.timer);
  state.undo = null;
  ui.undoBar.hidden = true;
}

function undoDelete() {
  const undo = state.undo;
  if (!undo) return;
  forgetUndo();
  const back = store.restore(undo.chat);
  if (back && undo.wasCurrent && !state.controller) {
    state.chat = back;
    store.setCurrent(back.id);
    renderChat();
  }
  renderChatList();
}

function newChat() {
  if (state.controller) return;
  cancelEdit();
  state.chat = store.create();
  if (typeof options.system === "string" && options.system) state.chat.system = options.system;
  renderChat();
  setStatus("Ready", "");
  ui.meta.replaceChildren();
  ui.prompt.value = "";
  fitPrompt();
  toggleChats(false);
  ui.prompt.focus();
}

function saveChat() {
  store.save(state.chat);
  renderChatList();
  showSaveFailure();
}

function showSaveFailure() {
  if (!store.saveFailed) return;
  // Nothing stored was removed to make room: the reader decides what to delete.
  setStatus("Could not save this conversation: the browser's storage is full. Nothing was removed; delete " +
            "old conversations under Chats to make room.", "error");
}

// Another tab saved: take in its conversations (per conversation the newer wins, deletions hold),
// and write back any of ours its write lacked (it had not seen them yet).
window.addEventListener("storage", (event) => {
  if (event.key !== CHATS_KEY || state.controller) return;
  if (store.sync(state.chat)) renderChatList();
});

// ---------------------------------------------------------------------------
// Streaming an answer
// ---------------------------------------------------------------------------

function setStreaming(streaming) {
  ui.sendBtn.textContent = streaming ? "Stop" : "Send";
  ui.sendBtn.setAttribute("aria-label", streaming ? "Stop the answer (Escape)" : "Send the question");
  ui.sendBtn.classList.toggle("is-stop", streaming);
  ui.newBtn.disabled = streaming;
  document.body.classList.toggle("is-streaming", streaming);
  for (const b of ui.turns.querySelectorAll(".edit-btn, .regen-btn, .retry-btn")) b.disabled = streaming;
  ui.turns.classList.toggle("is-busy", streaming);  // versions cannot be switched mid-answer
  const out = $("output");
  if (out) out.setAttribute("aria-busy", streaming ? "true" : "false");
  if (!ui.chatPanel.hidden) renderChatList();  // other conversations cannot be opened while one streams
}

const responsesApi = () => ui.api.value === "responses";

function requestBody(messages) {
  const system = (state.chat.system || "").trim();
  const body = { messages: system && !responsesApi() ? [{ role: "system", content: system }, ...messages] : messages };
  if (responsesApi()) {
    // The relay turns `messages` into the Responses API's input items; the instructions go as such.
    body.api = "responses";
    if (system) body.instructions = system;
    body.model = ui.responseModel.value;
    if (ui.drawing.checked) body.tools = [{ type: "image_generation" }];
    return JSON.stringify(body);
  }
  if (ui.modelFamily.value) body.model_family = ui.modelFamily.value;
  if (ui.tradition.value) body.tradition = ui.tradition.value;
  // The relay sends a request naming sources to Gloo's grounded endpoint, whose first event cites them.
  if (ui.grounded.checked) body.sources_limit = SOURCES_LIMIT;
  return JSON.stringify(body);
}

/** The context sent with turn `index`: every earlier exchange that has an answer, then its question
 * (with its image, for the Responses API: the question's text and the image as input parts). */
function messagesFor(index) {
  const messages = [];
  for (let i = 0; i < index; i++) {
    const t = state.chat.turns[i];
    messages.push({ role: "user", content: t.q });
    if (t.a) messages.push({ role: "assistant", content: t.a });
  }
  const turn = state.chat.turns[index];
  if (turn.image && responsesApi()) {
    messages.push({ role: "user", content: [{ type: "input_text", text: turn.q },
                                            { type: "input_image", image_url: turn.image }] });
  } else {
    messages.push({ role: "user", content: turn.q });
  }
  return messages;
}

/** An image the page may show: a PNG, JPEG or WebP data URL whose bytes start as that type's do. */
function safeImage(url) {
  if (typeof url !== "string" || url.length > 16 * 1024 * 1024) return null;
  const match = IMAGE_DATA.exec(url);
  return match && match[2].startsWith(IMAGE_MAGIC[match[1]]) ? url : null;
}

/** Ask a new question at the end of the conversation. */
function send() {
  if (state.controller) return;
  const question = ui.prompt.value;
  if (!question.trim()) {
    ui.prompt.focus();
    return;
  }
  cancelEdit();
  if (!state.chat.title) state.chat.title = question.trim().replace(/\s+/g, " ").slice(0, 80);
  const turn = { q: question, a: "" };
  if (state.attachment && responsesApi()) turn.image = state.attachment.url;
  state.chat.turns.push(turn);
  setAttachment(null);
  ui.prompt.value = "";
  fitPrompt();
  startRun(state.chat.turns.length - 1);
}

/** Stream the answer of turn `index` (a new question, a retry, a regenerate or an edit). */
function startRun(index) {
  const turn = state.chat.turns[index];
  state.chat.turns.length = index + 1;   // anything after it belongs to the old answer
  Object.assign(turn, { a: "", model: "", sources: [], error: "", outcome: "", stats: [], reasoning: "", images: [] });
  saveChat();

  for (const old of ui.turns.querySelectorAll(".turn")) {
    if (parseInt(old.dataset.index, 10) > index) old.remove();
  }
  let article = turnElement(index);
  if (!article) {
    article = buildTurn(turn, index);
    ui.turns.appendChild(article);
  } else {
    const fresh = buildTurn(turn, index);
    article.replaceWith(fresh);
    article = fresh;
  }
  ui.intro.hidden = true;
  markCurrent();
  article.querySelector(".answer-block").hidden = false;
  article.querySelector(".answer-foot").hidden = true;

  const run = {
    index, turn, article, text: "", tokens: 0, started: now(), firstToken: null, finished: null,
    verdict: null, error: null, stopped: false, gotResponse: false, model: "",
    sources: null, lastProgress: now(), frame: 0, reasoning: "", images: [], collapsed: false,
    view: new AnswerView(article.querySelector(".answer")),
  };
  state.run = run;
  const controller = new AbortController();
  state.controller = controller;
  setStreaming(true);
  setStatus("Connecting\u2026", "busy");
  run.view.update("", true);
  state.follow = true;
  scrollToEnd();
  const waitTimer = setInterval(() => showWaiting(run), 500);

  const headers = { "Content-Type": "application/json", "Accept": "text/event-stream" };
  const key = ui.apiKey.value.trim();
  if (key) headers.Authorization = "Bearer " + key;

  stream(run, headers, requestBody(messagesFor(index)), controller.signal)
    .catch((err) => {
      if (err && err.name === "AbortError") run.stopped = true;
      else if (run.error === null) {
        run.error = run.gotResponse
          ? "The connection was lost before the answer finished."
          : "Could not reach the chat server. Check that it is running, then try again.";
      }
    })
    .then(() => {
      clearInterval(waitTimer);
      finish(run);
    });
}

function showWaiting(run) {
  const note = run.article.querySelector(".waiting");
  const silent = now() - run.lastProgress;
  if (state.run !== run || silent < WAIT_NOTE_MS) {
    note.hidden = true;
    return;
  }
  note.hidden = false;
  const seconds = Math.round(silent / 1000);
  note.textContent = (run.text ? "Still waiting for the rest of the answer" : "Still waiting for the model to answer") +
    " (" + seconds + " s)\u2026 Press Stop or Escape to give up.";
}

/** Draw the answer at most once per frame: reads can come much faster than the screen refreshes. */
function scheduleRender(run) {
  if (run.frame) return;
  run.frame = requestAnimationFrame(() => {
    run.frame = 0;
    if (state.run !== run) return;
    run.view.update(run.text, true);
    if (run.reasoning) {
      // Open while the reasoning is all there is; closed once, when the answer begins.
      fillReasoning(run.article, run.reasoning, !run.text ? true : run.collapsed ? null : false);
      run.collapsed = Boolean(run.text);
    }
    fillMeta(ui.meta, runStats(run));
    if (state.follow) scrollToEnd();
  });
}

/** Apply one event's data to the run: content, model, sources, finish_reason, errors. */
function handleEvent(run, event) {
  const data = event.data;
  if (data === "[DONE]") return;  // (the verdict follows: event: outcome)
  let chunk;
  try {
    chunk = JSON.parse(data);
  } catch (e) {
    return;  // not JSON: nothing a person should see
  }
  if (!chunk || typeof chunk !== "object") return;
  if (event.event === "outcome") {  // the relay's verdict on the stream, reached once by the library
    if (typeof chunk.kind === "string") run.verdict = chunk;
    return;
  }
  const type = typeof chunk.type === "string" ? chunk.type : event.event;
  if (type.startsWith("response.") || (type === "error" && !chunk.error)) {
    handleResponseEvent(run, type, chunk);
    return;
  }
  if ((chunk.error || event.event === "error") && run.error === null) run.error = describeStreamError(chunk.error || chunk);
  if (typeof chunk.model === "string" && chunk.model) run.model = chunk.model.slice(0, 100);
  const sources = readSources(chunk);
  if (sources) run.sources = sources;
  const choice = Array.isArray(chunk.choices) ? chunk.choices[0] : null;
  if (!choice || typeof choice !== "object") return;
  const delta = choice.delta;
  const content = delta && typeof delta.content === "string" ? delta.content : "";
  if (content) {
    if (run.firstToken === null) run.firstToken = now();
    run.text += content;
    run.tokens += 1;
    run.lastProgress = now();
  }
  if (choice.finish_reason === "error" && run.error === null && chunk.error === undefined && choice.error) {
    run.error = describeStreamError(choice.error);
  }
}

/** One typed event of the Responses API: text, the reasoning summary, generated images, the ending. */
function handleResponseEvent(run, type, data) {
  if (type === "response.output_text.delta" && typeof data.delta === "string" && data.delta) {
    if (run.firstToken === null) run.firstToken = now();
    run.text += data.delta;
    run.tokens += 1;
    run.lastProgress = now();
  } else if (type === "response.reasoning_summary_text.delta" && typeof data.delta === "string") {
    run.reasoning += data.delta;
    run.lastProgress = now();
  } else if (type === "response.output_item.done" && data.item && data.item.type === "image_generation_call") {
    const format = ["png", "jpeg", "webp"].includes(data.item.output_format) ? data.item.output_format : "png";
    const url = safeImage("data:image/" + format + ";base64," + data.item.result);
    if (url && run.images.length < MAX_IMAGES) run.images.push(url);
    run.lastProgress = now();
  } else if (type === "response.created" || type === "response.in_progress" || type === "response.completed" ||
             type === "response.incomplete" || type === "response.failed") {
    const response = data.response && typeof data.response === "object" ? data.response : {};
    if (typeof response.model === "string" && response.model) run.model = response.model.slice(0, 100);
    if (type === "response.failed" && run.error === null && response.error) {
      run.error = describeStreamError(response.error);
    }
  } else if (type === "error" && run.error === null) {
    run.error = describeStreamError(data);
  }
}

async function stream(run, headers, body, signal) {
  if (new TextEncoder().encode(body).length > state.maxBodyBytes) {  // the relay would answer 413
    run.error = tooLong();
    return;
  }
  const response = await fetch(STREAM_URL, {
    method: "POST", headers, body, signal, cache: "no-store", credentials: "same-origin",
  });
  run.gotResponse = true;
  if (!response.ok) {
    if (response.status === 401) showKeyField(true);
    run.error = describeStatus(response.status, await response.text(), response.headers);
    return;
  }
  if (!response.body) {
    run.error = "This browser cannot read streamed answers.";
    return;
  }
  setStatus("Streaming\u2026", "busy");
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  const parser = createParser();
  const take = (events) => {
    for (const event of events) handleEvent(run, event);
  };
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      take(parser.feed(decoder.decode()));
      take(parser.end());
      return;
    }
    take(parser.feed(decoder.decode(value, { stream: true })));
    if (run.verdict) {  // the relay's last event
      reader.cancel().catch(() => {});
      return;
    }
    scheduleRender(run);
  }
}

function finish(run) {
  run.finished = now();
  if (run.frame) cancelAnimationFrame(run.frame);
  state.controller = null;
  if (state.run !== run) {
    setStreaming(false);
    return;
  }
  state.run = null;

  let outcome, kind, error = "";
  if (run.stopped) {
    outcome = "Stopped";
    kind = "stopped";
  } else if (run.error !== null) {
    error = run.error;
  } else if (!run.verdict) {  // the relay always ends with its verdict: without one, the connection went
    error = "The connection was lost before the answer finished.";
  } else if (run.verdict.kind === "provider_error") {
    error = "The model's provider failed before the answer finished. Try again.";
  } else if (run.verdict.kind !== "finished") {
    error = "The connection was lost before the answer finished.";
  } else if (run.verdict.finish_reason === "content_filter") {
    error = "The answer was stopped by the content filter.";
  } else {
    const cut = ["length", "max_output_tokens"].includes(run.verdict.finish_reason);
    outcome = cut ? "Done (the answer reached its length limit)" : "Done";
    kind = "done";
  }
  if (error) {
    outcome = "Error: " + error;
    kind = "error";
  }
  const turn = run.turn;
  Object.assign(turn, {
    a: run.text, model: run.model, sources: run.sources || [], error, reasoning: run.reasoning, images: run.images,
    outcome: kind === "error" ? "" : outcome,
    stats: run.gotResponse && (run.text || !error) ? runStats(run) : [],
  });
  saveChat();
  run.view.finish(run.text);
  fillTurn(run.article, turn, run.index, true);  // the view already shows the answer
  if (run.reasoning && run.text && !run.collapsed) fillReasoning(run.article, run.reasoning, false);
  setStreaming(false);
  setStatus(outcome, kind);
  showSaveFailure();
  fillMeta(ui.meta, turn.stats);
  if (state.follow || error) scrollToEnd();
  if (!ui.apiKeyRow.hidden && document.activeElement === ui.apiKey) return;
  if (state.editing === null) ui.prompt.focus();
}

function stop() {
  if (state.controller) state.controller.abort();
}

// ---------------------------------------------------------------------------
// Edit, retry, regenerate, copy
// ---------------------------------------------------------------------------

// A regenerated answer or an edited question is a new version of its exchange, a branch of the
// conversation: the versions (each with the exchanges that followed it) are kept on the turn, and
// `< 2/3 >` shows another. What is sent upstream, saved, exported is the branch on screen.
const VERSION_FIELDS = ["q", "a", "model", "sources", "error", "outcome", "stats", "reasoning", "image", "images"];

/** Turn `index` as it is on screen, with the exchanges after it: one version. */
function snapshot(index) {
  const turn = state.chat.turns[index];
  const version = { after: state.chat.turns.slice(index + 1) };
  for (const key of VERSION_FIELDS) if (turn[key] !== undefined) version[key] = turn[key];
  return version;
}

/** Keep what is on screen at turn `index` as a version and make room for a new one. */
function branch(index) {
  const turn = state.chat.turns[index];
  if (!Array.isArray(turn.versions) || !turn.versions.length) {
    turn.versions = [snapshot(index)];
  } else {
    turn.versions[turn.v] = snapshot(index);
  }
  turn.versions.push({ q: turn.q, after: [] });  // filled in when another version is shown
  turn.v = turn.versions.length - 1;
}

/** Show version `j` of turn `index`, and the exchanges that followed it. */
function showVersion(index, j) {
  const turn = state.chat.turns[index];
  if (state.controller || !turn || !Array.isArray(turn.versions) || j === turn.v) return;
  const chosen = turn.versions[j];
  if (!chosen || typeof chosen !== "object" || typeof chosen.q !== "string") return;
  cancelEdit();
  turn.versions[turn.v] = snapshot(index);
  for (const key of VERSION_FIELDS) {
    if (chosen[key] !== undefined) turn[key] = chosen[key];
    else delete turn[key];
  }
  turn.v = j;
  const after = Array.isArray(chosen.after) ? chosen.after.filter((t) => t && typeof t.q === "string") : [];
  state.chat.turns = state.chat.turns.slice(0, index + 1).concat(after);
  saveChat();
  renderChat();
}

function startEdit(index) {
  if (state.controller) return;
  cancelEdit();
  const article = turnElement(index);
  const question = article.querySelector(".question");
  const editor = el("div", "editor");
  const label = el("label", "visually-hidden", "Edit your question");
  const area = el("textarea", "edit-area");
  area.id = "editArea";
  label.htmlFor = "editArea";
  area.value = state.chat.turns[index].q;
  area.rows = Math.min(8, Math.max(2, area.value.split("\n").length));
  const row = el("div", "editor-actions");
  row.append(button("edit-send button-primary", "Save & send"), button("edit-cancel button-secondary", "Cancel"));
  editor.append(label, area, row);
  question.querySelector(".question-text").hidden = true;
  question.appendChild(editor);
  state.editing = index;
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
}

function cancelEdit() {
  if (state.editing === null) return;
  const article = turnElement(state.editing);
  state.editing = null;
  if (!article) return;
  const editor = article.querySelector(".editor");
  if (editor) editor.remove();
  article.querySelector(".question-text").hidden = false;
}

function submitEdit() {
  const index = state.editing;
  if (index === null || state.controller) return;
  const article = turnElement(index);
  const text = article.querySelector(".edit-area").value;
  if (!text.trim()) return;
  cancelEdit();
  branch(index);  // the question as it was, and what followed it, stay as a version
  state.chat.turns[index].q = text;
  if (index === 0) state.chat.title = text.trim().replace(/\s+/g, " ").slice(0, 80);
  startRun(index);
}

ui.turns.addEventListener("click", (event) => {
  const target = event.target.closest("button");
  if (!target || target.disabled) return;
  const article = target.closest(".turn");
  const index = article ? parseInt(article.dataset.index, 10) : -1;
  if (target.classList.contains("copy-code")) {
    const code = target.closest(".code-block").querySelector("pre code");
    const raw = typeof code.rawText === "string" ? code.rawText : code.textContent;
    copyText(raw, target);
    const hidden = (raw.match(BIDI_CONTROLS) || []).length;
    if (hidden) {
      setStatus("Copied, with " + plural(hidden, "hidden direction control") + " (shown as <U+\u2026> marks): " +
                "the code may run differently from how it reads.", "error");
    }
  } else if (target.classList.contains("copy-answer")) {
    copyText(state.chat.turns[index].a, target);
  } else if (target.classList.contains("regen-btn")) {
    if (!state.controller && index === state.chat.turns.length - 1) {
      branch(index);  // the answer so far stays as a version
      startRun(index);
    }
  } else if (target.classList.contains("retry-btn")) {
    if (!state.controller && index === state.chat.turns.length - 1) startRun(index);
  } else if (target.classList.contains("ver-prev") || target.classList.contains("ver-next")) {
    const turn = state.chat.turns[index];
    showVersion(index, turn.v + (target.classList.contains("ver-next") ? 1 : -1));
  } else if (target.classList.contains("edit-btn")) {
    startEdit(index);
  } else if (target.classList.contains("edit-send")) {
    submitEdit();
  } else if (target.classList.contains("edit-cancel")) {
    cancelEdit();
  }
});

ui.turns.addEventListener("keydown", (event) => {
  if (!event.target.classList.contains("edit-area")) return;
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey || (!touch && !event.shiftKey && !event.isComposing))) {
    event.preventDefault();
    submitEdit();
  }
});

// ---------------------------------------------------------------------------
// The composer, keys, scrolling
// ---------------------------------------------------------------------------

/** Grow the question box with its text (rows, not inline styles: the CSP forbids those). */
function fitPrompt() {
  const box = ui.prompt;
  box.rows = 2;
  while (box.rows < 8 && box.scrollHeight > box.clientHeight + 1) box.rows += 1;
}

function showKeyField(focus) {
  ui.apiKeyRow.hidden = false;
  if (focus) ui.apiKey.focus();
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (state.controller) stop();
  else send();
});
ui.newBtn.addEventListener("click", newChat);
ui.undoBtn.addEventListener("click", undoDelete);
ui.theme.addEventListener("change", () => {
  applyTheme(ui.theme.value);
  saveOptions();
});
ui.chatSearch.addEventListener("input", () => renderChatList());
ui.exportMd.addEventListener("click", () => exportChat("md"));
ui.exportJson.addEventListener("click", () => exportChat("json"));
ui.importInput.addEventListener("change", () => importChat(ui.importInput.files && ui.importInput.files[0]));
ui.starters.addEventListener("click", (event) => {
  const starter = event.target.closest(".starter");
  if (!starter || state.controller) return;
  ui.prompt.value = starter.textContent.trim();
  send();
});
ui.systemPrompt.addEventListener("input", () => {
  const value = ui.systemPrompt.value;
  if (value.trim()) state.chat.system = value;
  else delete state.chat.system;
  if (state.chat.turns.length) store.save(state.chat);  // a chat with no question yet is saved with it
  ui.instructionsPreview.textContent = value.trim() ? "\u2014 " + value.replace(/\s+/g, " ").slice(0, 60) : "(none)";
});
ui.defaultInstructions.addEventListener("click", () => {
  options.system = (state.chat.system || "").trim();
  saveOptions();
  ui.instructionsNote.textContent = options.system ? "New conversations start with these instructions."
    : "New conversations start without instructions.";
});
ui.chatsBtn.addEventListener("click", () => toggleChats());
ui.chatList.addEventListener("click", (event) => {
  const target = event.target.closest("button");
  if (!target) return;
  if (target.classList.contains("chat-delete")) deleteChat(target.dataset.id);
  else if (target.classList.contains("chat-rename")) renameChat(target.dataset.id);
  else if (target.classList.contains("chat-open")) switchChat(target.dataset.id);
});
ui.prompt.addEventListener("input", fitPrompt);
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || event.isComposing || event.keyCode === 229) return;
  if (event.ctrlKey || event.metaKey) {       // Ctrl/Cmd+Enter sends everywhere
    event.preventDefault();
    if (!state.controller) send();
    return;
  }
  if (touch || event.shiftKey || event.altKey) return;  // on a touch keyboard Enter adds a line
  event.preventDefault();
  if (!state.controller) send();
});
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  if (state.controller) {
    event.preventDefault();
    stop();
  } else if (state.editing !== null) {
    cancelEdit();
  } else if (!ui.chatPanel.hidden) {
    toggleChats(false);
    ui.chatsBtn.focus();
  }
});
function saveOptions() {
  store.saveOptions({ model_family: ui.modelFamily.value, tradition: ui.tradition.value, grounded: ui.grounded.checked,
                      api: ui.api.value, model: ui.responseModel.value, drawing: ui.drawing.checked,
                      system: typeof options.system === "string" ? options.system : "", theme: ui.theme.value });
}

/** Show the options of the API chosen: routing, tradition and sources, or a model, images and drawing. */
function showApiOptions() {
  for (const field of ui.form.querySelectorAll("[data-api]")) field.hidden = field.dataset.api !== ui.api.value;
  if (!responsesApi()) setAttachment(null);
}

function setAttachment(attachment) {
  state.attachment = attachment;
  ui.attached.hidden = !attachment;
  ui.attached.textContent = attachment ? attachment.name : "";
  if (!attachment) ui.imageInput.value = "";
}

for (const control of [ui.modelFamily, ui.tradition, ui.grounded, ui.api, ui.responseModel, ui.drawing]) {
  control.addEventListener("change", saveOptions);
}
ui.api.addEventListener("change", showApiOptions);
ui.imageInput.addEventListener("change", () => {
  const file = ui.imageInput.files && ui.imageInput.files[0];
  if (!file) return;
  if (!["image/png", "image/jpeg", "image/webp"].includes(file.type)) {
    setStatus("Attach a PNG, JPEG or WebP image.", "error");
    setAttachment(null);
    return;
  }
  if (file.size > state.maxImageBytes) {
    const limit = state.maxImageBytes >= 1024 * 1024 ? (state.maxImageBytes / 1024 / 1024).toFixed(1) + " MB"
      : Math.floor(state.maxImageBytes / 1024) + " KB";
    setStatus("That image is larger than " + limit + ", the most this server takes: attach a smaller one.", "error");
    setAttachment(null);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    const url = safeImage(String(reader.result));
    if (!url) {
      setStatus("That file is not the image it says it is.", "error");
      setAttachment(null);
      return;
    }
    setAttachment({ name: file.name.slice(0, 80), url });
    setStatus("Image attached: it goes with your next question.", "");
  };
  reader.readAsDataURL(file);
});

function updateJump() {
  // Growing text fires no scroll event, so this only changes when the reader (or scrollToEnd) scrolls.
  state.follow = nearBottom();
  ui.jumpBtn.hidden = state.follow || !state.chat.turns.length;
}
window.addEventListener("scroll", updateJump, { passive: true });
window.addEventListener("resize", updateJump, { passive: true });
ui.jumpBtn.addEventListener("click", () => {
  scrollToEnd();
  ui.jumpBtn.hidden = true;
});

function storedKey() {
  try {
    return window.sessionStorage.getItem(KEY_STORAGE) || "";
  } catch (e) {
    return "";  // storage disabled: the field still works for this page's life
  }
}

ui.apiKey.value = storedKey();
ui.apiKey.addEventListener("input", () => {
  try {
    const value = ui.apiKey.value.trim();
    if (value) window.sessionStorage.setItem(KEY_STORAGE, value);
    else window.sessionStorage.removeItem(KEY_STORAGE);
  } catch (e) {
    /* storage disabled */
  }
});
if (ui.apiKey.value) showKeyField(false);

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

const options = store.options();

/** "light", "dark", or "" for the system's (the stylesheet's colours are light-dark() pairs). */
function applyTheme(theme) {
  if (theme === "light" || theme === "dark") document.documentElement.setAttribute("data-theme", theme);
  else document.documentElement.removeAttribute("data-theme");
}
if (options.theme === "light" || options.theme === "dark") ui.theme.value = options.theme;
applyTheme(ui.theme.value);
if (!state.chat.turns.length && !state.chat.system && typeof options.system === "string" && options.system) {
  state.chat.system = options.system;  // a new conversation starts with the default instructions
}
for (const [select, value] of [[ui.modelFamily, options.model_family], [ui.tradition, options.tradition]]) {
  if (typeof value === "string" && [...select.options].some((o) => o.value === value)) select.value = value;
}
ui.grounded.checked = options.grounded === true;
for (const [select, value] of [[ui.api, options.api], [ui.responseModel, options.model]]) {
  if (typeof value === "string" && [...select.options].some((o) => o.value === value)) select.value = value;
}
ui.drawing.checked = options.drawing === true;
showApiOptions();
if (touch) {
  ui.prompt.setAttribute("enterkeyhint", "enter");
  ui.hint.textContent = "Send button sends \u00b7 Enter adds a line";
}

fetch(HEALTH_URL, { cache: "no-store", credentials: "same-origin" })
  .then((response) => (response.ok ? response.json() : null))
  .then((health) => {
    if (health && health.auth_required === true) showKeyField(false);
    if (health && health.simulator === true) ui.simBadge.hidden = false;
    if (health && Number.isFinite(health.max_body_bytes)) {
      state.maxBodyBytes = health.max_body_bytes;
      state.maxImageBytes = Math.max(0, Math.min(MAX_IMAGE_BYTES, Math.floor((health.max_body_bytes - 65536) * 3 / 4)));
    }
    document.documentElement.setAttribute("data-health", health ? "ok" : "unavailable");
  })
  .catch(() => {
    // No health route: the key field still appears on a 401.
    document.documentElement.setAttribute("data-health", "unavailable");
  });

/** "GPT-5 mini · $0.25/$2": a catalog entry as the picker shows it (USD per 1M tokens in and out). */
function modelLabel(model) {
  const name = typeof model.name === "string" && model.name ? model.name.slice(0, 60) : model.id.slice(0, 100);
  const p = model.pricing && typeof model.pricing === "object" ? model.pricing : null;
  const price = (value) => (typeof value === "number" && Number.isFinite(value) ? "$" + value : "?");
  return p ? name + " \u00b7 " + price(p.input) + "/" + price(p.output) : name;
}

/** Fill the Responses model picker from the relay's catalog (index.html's list stays when there is none). */
function loadModels() {
  const headers = {};
  const key = ui.apiKey.value.trim();
  if (key) headers.Authorization = "Bearer " + key;
  fetch(MODELS_URL, { headers, cache: "no-store", credentials: "same-origin" })
    .then((response) => (response.ok ? response.json() : null))
    .then((list) => {
      const models = (list && Array.isArray(list.data) ? list.data : []).filter((m) => m && typeof m.id === "string" &&
        m.id && m.id !== "auto" && (!Array.isArray(m.capabilities) || m.capabilities.includes("responses")));
      if (!models.length) return;
      const wanted = [ui.responseModel.value, options.model];
      ui.responseModel.replaceChildren(...models.slice(0, 200).map((model) => {
        const option = el("option", "", modelLabel(model));
        option.value = model.id;
        option.title = model.id + (model.pricing ? ": US dollars per million tokens, in / out" : "");
        return option;
      }));
      const keep = wanted.find((id) => typeof id === "string" && models.some((m) => m.id === id));
      if (keep) ui.responseModel.value = keep;
      document.documentElement.setAttribute("data-models", String(ui.responseModel.options.length));
    })
    .catch(() => {});  // no catalog: the list in index.html is the picker
}
loadModels();
// A relay that wants a key answers /v1/models only with it: ask again once one is entered.
ui.apiKey.addEventListener("change", () => {
  if (!document.documentElement.hasAttribute("data-models")) loadModels();
});

// A page closed or reloaded mid-answer left a question without an answer or an error: say so,
// so that Retry is there.
const lastTurn = state.chat.turns[state.chat.turns.length - 1];
if (lastTurn && !lastTurn.a && !lastTurn.error) lastTurn.error = "This answer was interrupted before it began. Try again.";
renderChat();
setStreaming(false);
if (store.skipped) {
  setStatus(plural(store.skipped, "saved item") + " could not be read and " + (store.skipped === 1 ? "was" : "were") +
            " skipped; the rest of your conversations are here.", "error");
}
fitPrompt();
if (state.chat.turns.length) scrollToEnd();
ui.prompt.focus();
document.documentElement.setAttribute("data-ready", "true");
