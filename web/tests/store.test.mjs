// SPDX-License-Identifier: MIT
// node --test web/tests/ : conversations in storage (web/store.js), with an in-memory Storage.
import test from "node:test";
import assert from "node:assert/strict";
import { load } from "./load.mjs";

const { ChatStore, CHATS_KEY, OPTIONS_KEY, MAX_CHATS, MAX_CHARS } = await load("store.js");

function memoryStorage(quota = Infinity) {
  const items = new Map();
  return {
    items,
    getItem: (key) => (items.has(key) ? items.get(key) : null),
    setItem: (key, value) => {
      const size = [...items].reduce((n, [k, v]) => n + (k === key ? 0 : v.length), 0) + String(value).length;
      if (size > quota) {
        const error = new Error("quota");
        error.name = "QuotaExceededError";
        throw error;
      }
      items.set(key, String(value));
    },
    removeItem: (key) => items.delete(key),
  };
}

function ask(store, chat, q, a = "answer") {
  chat.turns.push({ q, a });
  if (!chat.title) chat.title = q;
  store.save(chat);
}

test("a new chat is not stored until it has a question; the current one comes back", () => {
  const storage = memoryStorage();
  const store = new ChatStore(storage);
  const chat = store.current();
  assert.equal(store.list().length, 0);
  ask(store, chat, "first");
  const again = new ChatStore(storage);
  assert.equal(again.current().id, chat.id);
  assert.deepEqual(again.current().turns, [{ q: "first", a: "answer" }]);
});

test("new chat keeps the old one; remove picks the newest left", () => {
  const storage = memoryStorage();
  const store = new ChatStore(storage);
  const one = store.current();
  ask(store, one, "one");
  const two = store.create();
  ask(store, two, "two");
  assert.deepEqual(store.list().map((c) => c.title).sort(), ["one", "two"]);
  store.remove(two.id);
  assert.equal(new ChatStore(storage).current().id, one.id);
});

test("at most MAX_CHATS conversations and about MAX_CHARS characters; the oldest go", () => {
  const storage = memoryStorage();
  const store = new ChatStore(storage);
  const ids = [];
  for (let i = 0; i < MAX_CHATS + 10; i++) {
    const chat = store.create();
    ask(store, chat, "q" + i, "a".repeat(40000));
    ids.push(chat.id);
  }
  const again = new ChatStore(storage);
  assert.ok(again.list().length <= MAX_CHATS);
  assert.ok(storage.getItem(CHATS_KEY).length <= MAX_CHARS + 1000);
  assert.equal(again.get(ids[0]), null, "the oldest is gone");
  assert.notEqual(again.get(ids[ids.length - 1]), null, "the newest stays");
});

test("one conversation alone over the bound loses its oldest exchanges", () => {
  const store = new ChatStore(memoryStorage());
  const chat = store.current();
  for (let i = 0; i < 40; i++) ask(store, chat, "q" + i, "b".repeat(60000));
  assert.ok(chat.turns.length < 40 && chat.turns.length > 1);
  assert.equal(chat.turns[chat.turns.length - 1].q, "q39");
});

test("over the browser's quota a save fails and says so; nothing that was stored is dropped (#19.3)", () => {
  const storage = memoryStorage(200000);
  const store = new ChatStore(storage);
  for (let i = 0; i < 10; i++) ask(store, store.create(), "q" + i, "c".repeat(30000));
  assert.equal(store.saveFailed, true);
  const again = new ChatStore(storage);
  assert.deepEqual(again.list().map((c) => c.title).sort(), ["q0", "q1", "q2", "q3", "q4", "q5"]);  // all that fit
  assert.equal(store.list().length, 10);  // and this tab still has every one in memory
});

test("two tabs merge per conversation; a deletion in one holds in the other (#19.3)", () => {
  const storage = memoryStorage();
  const a = new ChatStore(storage);
  const b = new ChatStore(storage);
  ask(a, a.current(), "from A");
  ask(b, b.current(), "from B");   // B had never seen A's conversation
  const fresh = new ChatStore(storage);
  assert.deepEqual(fresh.list().map((c) => c.title).sort(), ["from A", "from B"]);
  const shared = a.list().find((c) => c.title === "from B");  // A took in B's on its next write? not yet:
  assert.equal(shared, undefined);
  assert.equal(a.merge(), true);  // a `storage` event: A takes in B's conversation
  const bsChat = a.list().find((c) => c.title === "from B");
  assert.ok(bsChat);
  b.remove(b.list().find((c) => c.title === "from A").id);
  ask(a, a.get(bsChat.id), "more in A");  // A writes again: B's deletion holds, A's addition lands
  const after = new ChatStore(storage);
  assert.deepEqual(after.list().map((c) => c.title), ["from B"]);
  assert.equal(after.list()[0].turns.length, 2);
});

test("a tab that wrote without a conversation it had not seen yet gets it back from the storage event", () => {
  const storage = memoryStorage();
  const a = new ChatStore(storage);
  // B's view of storage lags behind A's write, as a browser tells tabs of each other's writes late.
  const before = storage.getItem(CHATS_KEY);
  let stale = true;
  const lagging = { ...storage, getItem: (key) => (stale && key === CHATS_KEY ? before : storage.getItem(key)) };
  const b = new ChatStore(lagging);
  ask(a, a.current(), "from A");
  ask(b, b.current(), "from B");  // written without A's conversation
  assert.deepEqual(new ChatStore(storage).list().map((c) => c.title), ["from B"]);  // A's is in A's memory only
  stale = false;
  assert.equal(a.sync(), true);  // the storage event in A: B's is taken in, A's written back
  assert.deepEqual(new ChatStore(storage).list().map((c) => c.title).sort(), ["from A", "from B"]);
  const written = storage.items.get(CHATS_KEY);
  assert.equal(b.sync(), true);  // the storage event in B: A's taken in; nothing of B's is behind,
  assert.equal(storage.items.get(CHATS_KEY), written);  // so nothing is written (no ping-pong)
  assert.equal(a.sync(), false);
});

test("no storage, or unreadable storage: everything still works in memory", () => {
  const store = new ChatStore(null);
  const chat = store.current();
  ask(store, chat, "q");
  assert.equal(store.list().length, 1);
  assert.deepEqual(store.options(), {});
  const broken = memoryStorage();
  broken.items.set(CHATS_KEY, "{not json");
  assert.equal(new ChatStore(broken).list().length, 0);
  broken.items.set(CHATS_KEY, JSON.stringify({ chats: [{ id: 1 }, { id: "ok", turns: [] }, null] }));
  assert.deepEqual(new ChatStore(broken).list().map((c) => c.id), ["ok"]);
});

test("options are remembered", () => {
  const storage = memoryStorage();
  new ChatStore(storage).saveOptions({ model_family: "anthropic", tradition: "catholic" });
  assert.deepEqual(new ChatStore(storage).options(), { model_family: "anthropic", tradition: "catholic" });
  assert.ok(storage.items.has(OPTIONS_KEY));
});

test("start-up survives any stored record: what cannot be read is skipped and counted (#19.4)", () => {
  const storage = memoryStorage();
  storage.setItem(CHATS_KEY, JSON.stringify({ current: "good", chats: [
    null, 7, { id: 3, turns: [] }, { id: "noturns" },
    { id: "good", title: "Kept", created: 1, updated: 2, turns: [null, { q: "Hi", a: "Hello", stats: ["1 token", 5] },
                                                               { a: "no question" }, { q: "Why?", sources: [null, { href: "https://x.example/" }] }] },
  ] }));
  const store = new ChatStore(storage);
  assert.equal(store.skipped, 6);  // four chats and two turns
  assert.equal(store.list().length, 1);
  const chat = store.current();
  assert.equal(chat.id, "good");
  assert.deepEqual(chat.turns.map((t) => t.q), ["Hi", "Why?"]);
  assert.deepEqual(chat.turns[0].stats, ["1 token"]);
  assert.deepEqual(chat.turns[1].sources, [{ href: "https://x.example/" }]);
  assert.equal(chat.turns[1].a, undefined);
});

test("a deleted conversation brought back (Undo) is stored again, in every tab", () => {
  const storage = memoryStorage();
  const tabA = new ChatStore(storage);
  const kept = tabA.current();
  ask(tabA, kept, "kept");
  const other = tabA.create();
  ask(tabA, other, "other");
  const tabB = new ChatStore(storage);
  tabA.remove(kept.id);
  tabB.merge();
  assert.deepEqual(tabB.list().map((c) => c.title), ["other"], "the deletion reached the other tab");
  tabA.restore(kept);
  assert.deepEqual(new ChatStore(storage).list().map((c) => c.title).sort(), ["kept", "other"]);
  tabB.merge();
  assert.deepEqual(tabB.list().map((c) => c.title).sort(), ["kept", "other"], "and the other tab sees it back");
  const back = tabA.list().find((c) => c.title === "kept");
  assert.notEqual(back.id, kept.id, "under a new id: the old one stays deleted everywhere");
});
