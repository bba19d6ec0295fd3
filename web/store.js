// SPDX-License-Identifier: MIT
/* gloo-stream: conversations kept in localStorage, bounded.
 *
 *   const store = new ChatStore(window.localStorage);
 *   store.current() / list() / get(id) / create() / save(chat) / remove(id) / setCurrent(id)
 *   store.options() / saveOptions({model_family, tradition})
 *
 * One JSON record under "glooStream.chats.v1": {current, chats: [{id, title, created, updated,
 * turns}]}. At most MAX_CHATS conversations and about MAX_CHARS characters: the conversations
 * touched longest ago go first, and when the browser's quota is hit anyway, more go until it fits.
 * A chat with no question yet is never stored. When storage is unavailable everything still
 * works for the page's life, in memory.
 */

export const CHATS_KEY = "glooStream.chats.v1";
export const OPTIONS_KEY = "glooStream.options";

// Images (an attached one, generated ones) are megabytes of base64: they stay on the page while it
// is open and are not saved, so they never push earlier conversations out of the browser's quota.
const withoutImages = (key, value) => (key === "image" || key === "images" ? undefined : value);
export const MAX_CHATS = 40;
export const MAX_CHARS = 1500000;

function newId() {
  const random = Math.random().toString(36).slice(2, 10);
  return "c" + Date.now().toString(36) + random;
}

function validChat(chat) {
  return chat && typeof chat === "object" && typeof chat.id === "string" && Array.isArray(chat.turns);
}

const text = (value) => (typeof value === "string" ? value : "");

/** A stored turn as the page can show it (fields of the wrong type left out), or null when it is not
 * one at all (a null, a turn without a question). */
function cleanTurn(turn) {
  if (!turn || typeof turn !== "object" || typeof turn.q !== "string") return null;
  const clean = { ...turn };
  for (const key of ["a", "model", "error", "outcome", "reasoning"]) {
    if (key in clean && typeof clean[key] !== "string") delete clean[key];
  }
  if ("stats" in clean) {
    if (Array.isArray(clean.stats)) clean.stats = clean.stats.filter((v) => typeof v === "string");
    else delete clean.stats;
  }
  if ("sources" in clean) {
    if (Array.isArray(clean.sources)) {
      clean.sources = clean.sources.filter((v) => v && typeof v === "object" && typeof v.href === "string");
    } else {
      delete clean.sources;
    }
  }
  return clean;
}

export class ChatStore {
  constructor(storage) {
    this.storage = storage || null;
    this.data = { current: "", chats: [] };
    this.draft = null;  // the chat on screen before its first question
    this.skipped = 0;   // stored conversations or turns that could not be read
    try {
      const parsed = JSON.parse(this.storage.getItem(CHATS_KEY) || "null");
      if (parsed && Array.isArray(parsed.chats)) {
        // Start-up survives any stored record: what cannot be read is skipped (and counted), the rest kept.
        for (const chat of parsed.chats) {
          if (!validChat(chat)) {
            this.skipped += 1;
            continue;
          }
          const turns = chat.turns.map(cleanTurn);
          this.skipped += turns.filter((t) => t === null).length;
          this.data.chats.push({ ...chat, title: text(chat.title), turns: turns.filter((t) => t !== null) });
        }
        this.data.current = typeof parsed.current === "string" ? parsed.current : "";
      }
    } catch (e) {
      /* unreadable or no storage: start empty */
    }
  }

  /** Newest first. */
  list() {
    return this.data.chats.slice().sort((a, b) => (b.updated || 0) - (a.updated || 0));
  }

  get(id) {
    return this.data.chats.find((c) => c.id === id) || null;
  }

  /** The conversation to show: the one last open, or a new one. */
  current() {
    return this.get(this.data.current) || this.create();
  }

  create() {
    const time = Date.now();
    this.draft = { id: newId(), title: "", created: time, updated: time, turns: [] };
    this.data.current = this.draft.id;
    this.write();
    return this.draft;
  }

  setCurrent(id) {
    this.data.current = id;
    this.write();
  }

  save(chat) {
    chat.updated = Date.now();
    if (!this.get(chat.id) && chat.turns.length) this.data.chats.push(chat);
    if (this.draft === chat) this.draft = null;
    this.data.current = chat.id;
    this.prune(chat);
    this.write(chat);
  }

  remove(id) {
    this.data.chats = this.data.chats.filter((c) => c.id !== id);
    if (this.data.current === id) this.data.current = this.data.chats.length ? this.list()[0].id : "";
    this.write();
  }

  /** Oldest conversations out until the bounds hold (never the one being saved). */
  prune(keep) {
    const size = (c) => JSON.stringify(c).length;
    let total = this.data.chats.reduce((n, c) => n + size(c), 0);
    const byAge = this.data.chats.slice().sort((a, b) => (a.updated || 0) - (b.updated || 0));
    for (const chat of byAge) {
      if (this.data.chats.length <= MAX_CHATS && total <= MAX_CHARS) break;
      if (chat === keep) continue;
      this.data.chats = this.data.chats.filter((c) => c !== chat);
      total -= size(chat);
    }
    // One conversation alone too big: its oldest exchanges go.
    while (keep && total > MAX_CHARS && keep.turns.length > 1) {
      total -= size(keep.turns.shift());
    }
  }

  write(keep) {
    if (!this.storage) return;
    for (;;) {
      try {
        this.storage.setItem(CHATS_KEY, JSON.stringify(this.data, withoutImages));
        return;
      } catch (e) {
        if (!e || (e.name !== "QuotaExceededError" && e.code !== 22)) return;  // storage off: memory only
        // Over the browser's quota: drop the oldest conversation (not `keep`) and try again.
        const victims = this.list().reverse().filter((c) => c !== keep);
        if (!victims.length) return;
        this.data.chats = this.data.chats.filter((c) => c !== victims[0]);
      }
    }
  }

  options() {
    try {
      const parsed = JSON.parse(this.storage.getItem(OPTIONS_KEY) || "{}");
      return parsed && typeof parsed === "object" ? parsed : {};
    } catch (e) {
      return {};
    }
  }

  saveOptions(options) {
    try {
      this.storage.setItem(OPTIONS_KEY, JSON.stringify(options));
    } catch (e) {
      /* no storage: remembered for this page only */
    }
  }
}
