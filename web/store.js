// SPDX-License-Identifier: MIT
/* gloo-stream: conversations kept in localStorage, bounded.
 *
 *   const store = new ChatStore(window.localStorage);
 *   store.current() / list() / get(id) / create() / save(chat) / remove(id) / restore(chat) / setCurrent(id)
 *   store.options() / saveOptions({model_family, tradition})
 *
 * One JSON record under "glooStream.chats.v1": {current, chats: [{id, title, created, updated,
 * turns}], deleted: [ids]}. At most MAX_CHATS conversations and about MAX_CHARS characters: the
 * conversations touched longest ago go first. When the browser's quota is hit (other keys may fill
 * it), nothing is removed to make room: the save fails, `saveFailed` says so, and what was stored stays.
 * Several tabs share the storage: each write merges per conversation with what the others saved
 * (the newer one wins; a deletion anywhere holds), and a page can call merge() on a `storage` event.
 * A chat with no question yet is never stored. When storage is unavailable everything still
 * works for the page's life, in memory.
 */

export const CHATS_KEY = "glooStream.chats.v1";
export const CONVERSATION_FORMAT = "gloo-stream/conversation";  // the export files' (and `gloo_stream.py --export`'s)
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
    this.data = { current: "", chats: [], deleted: [] };
    this.draft = null;  // the chat on screen before its first question
    this.skipped = 0;   // stored conversations or turns that could not be read
    this.saveFailed = false;  // the last write did not fit in the browser's storage (nothing was removed)
    const stored = this.read(true);
    if (stored) {
      this.data.chats = stored.chats;
      this.data.deleted = stored.deleted;
      this.data.current = stored.current;
    }
  }

  /** What is in storage now (another tab may have written since): chats cleaned, bad records skipped. */
  read(count = false) {
    try {
      const parsed = JSON.parse(this.storage.getItem(CHATS_KEY) || "null");
      if (!parsed || !Array.isArray(parsed.chats)) return null;
      const chats = [];
      // Start-up survives any stored record: what cannot be read is skipped (and counted), the rest kept.
      for (const chat of parsed.chats) {
        if (!validChat(chat)) {
          if (count) this.skipped += 1;
          continue;
        }
        const turns = chat.turns.map(cleanTurn);
        if (count) this.skipped += turns.filter((t) => t === null).length;
        chats.push({ ...chat, title: text(chat.title), turns: turns.filter((t) => t !== null) });
      }
      const deleted = Array.isArray(parsed.deleted) ? parsed.deleted.filter((id) => typeof id === "string") : [];
      return { chats, deleted, current: typeof parsed.current === "string" ? parsed.current : "" };
    } catch (e) {
      return null;  /* unreadable or no storage: start empty */
    }
  }

  /** Take in what other tabs saved: per conversation, the newer one wins (`keep`, being saved here,
   * always); a conversation deleted anywhere stays deleted. Returns whether anything changed. */
  merge(keep) {
    const stored = this.storage ? this.read() : null;
    if (!stored) return false;
    const deleted = new Set([...stored.deleted, ...this.data.deleted]);
    const byId = new Map();
    for (const chat of stored.chats) if (!deleted.has(chat.id)) byId.set(chat.id, chat);
    let changed = false;
    for (const chat of this.data.chats) {
      const other = byId.get(chat.id);
      if (!other || chat === keep || (chat.updated || 0) >= (other.updated || 0)) byId.set(chat.id, chat);
      else changed = true;  // another tab's version is newer
    }
    const merged = [...byId.values()].filter((c) => !deleted.has(c.id));
    changed = changed || merged.length !== this.data.chats.length;
    this.data.chats = merged;
    this.data.deleted = [...deleted].slice(-200);
    return changed;
  }

  /** Another tab wrote: take in its conversations (merge), and when what it wrote lacks any of ours,
   * or holds an older copy of one, write the union back. Tabs see each other's writes a moment late,
   * so a tab can write without a conversation another tab had just saved; without this, that one
   * would be kept only in the other tab's memory. Returns whether anything changed here. */
  sync(keep) {
    const changed = this.merge(keep);
    const stored = this.storage ? this.read() : null;
    if (!stored) return changed;
    const storedById = new Map(stored.chats.map((c) => [c.id, c]));
    const behind = this.data.chats.some((chat) => {
      const there = storedById.get(chat.id);
      return chat.turns.length && (!there || (chat.updated || 0) > (there.updated || 0));
    });
    if (behind) this.write(keep);
    return changed;
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
    const at = this.data.chats.findIndex((c) => c.id === chat.id);
    if (at >= 0) this.data.chats[at] = chat;  // (another tab's copy may have been merged in)
    else if (chat.turns.length) this.data.chats.push(chat);
    if (this.draft === chat) this.draft = null;
    this.data.current = chat.id;
    this.prune(chat);
    this.write(chat);
  }

  /** A conversation from an exported file (the JSON of the page's and the CLI's export, format
   * CONVERSATION_FORMAT version 1), stored under a new id and made current; null when it is not one. */
  importChat(record) {
    if (!record || typeof record !== "object" || record.format !== CONVERSATION_FORMAT || record.version !== 1 ||
        !Array.isArray(record.turns)) return null;
    const turns = record.turns.map(cleanTurn).filter((t) => t !== null);
    if (!turns.length) return null;
    const time = Date.now();
    const chat = { id: newId(), title: text(record.title).slice(0, 200) || turns[0].q.slice(0, 80),
                   created: Number.isFinite(record.created) ? record.created : time, updated: time, turns };
    if (typeof record.system === "string" && record.system) chat.system = record.system.slice(0, 20000);
    this.data.chats.push(chat);
    this.data.current = chat.id;
    this.write();
    return chat;
  }

  /** Put back a conversation removed a moment ago (Undo). It comes back under a new id, since its
   * deletion holds in every tab (a tab may have merged it already); returns the conversation as stored. */
  restore(chat) {
    if (!chat || typeof chat !== "object") return null;
    const back = { ...chat, id: newId() };
    this.data.chats.push(back);
    this.write();
    return back;
  }

  remove(id) {
    this.data.chats = this.data.chats.filter((c) => c.id !== id);
    if (!this.data.deleted.includes(id)) this.data.deleted.push(id);  // so no other tab brings it back
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

  /** Save, merged per conversation with what other tabs saved. Over the browser's quota nothing is
   * removed to make room: the write fails, `saveFailed` says so, and what was stored stays. */
  write(keep) {
    if (!this.storage) return true;
    this.merge(keep);
    this.prune(keep);
    try {
      this.storage.setItem(CHATS_KEY, JSON.stringify(this.data, withoutImages));
      this.saveFailed = false;
    } catch (e) {
      // Over the quota (other keys may fill it) or storage off: memory only, and the page says so.
      this.saveFailed = Boolean(e && (e.name === "QuotaExceededError" || e.code === 22));
    }
    return !this.saveFailed;
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
