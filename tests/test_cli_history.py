"""The command line's memory: every exchange in SQLite, -c / --cid, --history, --export, --chat's commands."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import unittest

import gloo_stream
from fake_gloo import FakeGloo
from tests.support import CLI, clean_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class HistoryTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.fake = FakeGloo().start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.fake.stop()

    def setUp(self) -> None:
        self.cwd = tempfile.mkdtemp()
        self.data = os.path.join(self.cwd, "data")
        self.addCleanup(shutil.rmtree, self.cwd, True)

    def run_cli(self, *args: str, stdin: str = "", log: str = "1") -> subprocess.CompletedProcess:
        env = clean_environment(dict(self.fake.env, GLOO_LOG=log, GLOO_DATA_DIR=self.data))
        return subprocess.run(CLI + list(args), input=stdin, capture_output=True, text=True, timeout=30,
                              env=env, cwd=self.cwd)

    def json_run(self, *args: str) -> dict:
        proc = self.run_cli("--json", *args)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return json.loads(proc.stdout)


class HistoryTests(HistoryTestCase):
    def test_every_exchange_is_kept_and_continue_sends_the_conversation(self):
        first = self.json_run("--system", "Be brief.", "[[echo]] What is grace?")
        conversation = first["conversation"]
        self.assertRegex(conversation, r"^[0-9a-f]{12}$")
        second = self.json_run("-c", "[[echo]] And hope?")
        self.assertEqual(second["conversation"], conversation)
        sent = self.fake.requests[-1]["body"]["messages"]
        self.assertEqual(sent, [{"role": "system", "content": "Be brief."},  # the stored system message too
                                {"role": "user", "content": "[[echo]] What is grace?"},
                                {"role": "assistant", "content": "What is grace?"},
                                {"role": "user", "content": "[[echo]] And hope?"}])
        third = self.json_run("--cid", conversation[:6], "[[echo]] Thanks")  # a unique prefix
        self.assertEqual(third["conversation"], conversation)
        fresh = self.json_run("[[echo]] Something else")
        self.assertNotEqual(fresh["conversation"], conversation)
        exported = self.json_run("--export", conversation)
        self.assertEqual((exported["format"], exported["version"], exported["id"], exported["system"]),
                         (gloo_stream.CONVERSATION_FORMAT, 1, conversation, "Be brief."))
        self.assertEqual([turn["q"] for turn in exported["turns"]],
                         ["[[echo]] What is grace?", "[[echo]] And hope?", "[[echo]] Thanks"])
        self.assertEqual(exported["turns"][1]["a"], "And hope?")
        self.assertEqual(exported["turns"][0]["outcome"], "finished")
        self.assertEqual(self.json_run("--export", "last")["id"], fresh["conversation"])
        database = os.path.join(self.data, "history.db")
        self.assertEqual(stat.S_IMODE(os.stat(database).st_mode), 0o600)  # answers can be private
        with sqlite3.connect(database) as db:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM exchanges").fetchone()[0], 4)

    def test_import_reads_the_pages_export_and_continues_it(self):
        page_export = {"format": "gloo-stream/conversation", "version": 1, "id": "page-id-1", "title": "From the page",
                       "created": 1796696205966, "updated": 1796696206430, "system": "Be brief.",
                       "turns": [{"q": "[[echo]] What is grace?", "a": "What is grace?", "model": "m",
                                  "error": None, "outcome": "Done", "sources": []}]}
        path = os.path.join(self.cwd, "page.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(page_export, handle)
        imported = self.json_run("--import", path)
        self.assertEqual(imported["exchanges"], 1)
        answer = self.json_run("--cid", imported["conversation"], "[[echo]] And hope?")
        self.assertEqual(self.fake.requests[-1]["body"]["messages"],
                         [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "[[echo]] What is grace?"},
                          {"role": "assistant", "content": "What is grace?"},
                          {"role": "user", "content": "[[echo]] And hope?"}])
        exported = self.json_run("--export", answer["conversation"])
        self.assertEqual((exported["title"], len(exported["turns"])), ("From the page", 2))
        again = self.run_cli("--import", "-", stdin=json.dumps(exported))  # its own export reads back too
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("imported as", again.stderr)
        for bad, why in (('{"format": "other"}', "not a conversation file"), ("not json", "not JSON")):
            with self.subTest(bad=bad):
                refused = self.run_cli("--import", "-", stdin=bad)
                self.assertEqual(refused.returncode, 2)
                self.assertIn(why, refused.stderr)

    def test_history_lists_and_searches(self):
        self.json_run("[[echo]] The parable of the sower")
        self.json_run("[[echo]] Psalm 23 and the shepherd")
        listed = self.run_cli("--history")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        lines = listed.stdout.splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn("[[echo]] Psalm 23 and the shepherd", lines[0])  # the latest first
        found = self.json_run("--history", "shepherd")["conversations"]
        self.assertEqual([c["title"] for c in found], ["[[echo]] Psalm 23 and the shepherd"])
        self.assertEqual(self.json_run("--history", 'sower "quotes" 100%')["conversations"], [])  # never a syntax error
        self.assertIn("no conversation matches", self.run_cli("--history", "zzz-nothing").stderr)

    def test_off_means_nothing_kept(self):
        self.assertEqual(self.run_cli("Hi", log="0").returncode, 0)
        self.assertEqual(self.run_cli("--no-log", "Hi").returncode, 0)
        self.assertFalse(os.path.exists(os.path.join(self.data, "history.db")))
        refused = self.run_cli("-c", "Hi", log="0")
        self.assertEqual(refused.returncode, 2)
        self.assertIn("-c and --cid need the history", refused.stderr)

    def test_clear_errors(self):
        nothing = self.run_cli("-c", "Hi")
        self.assertEqual(nothing.returncode, 2)
        self.assertIn("no conversation to continue yet", nothing.stderr)
        self.json_run("Hi")
        unknown = self.run_cli("--cid", "ffffffffffff", "Hi")
        self.assertEqual(unknown.returncode, 2)
        self.assertIn("is not a conversation in the history", unknown.stderr)
        self.assertIn("takes no question", self.run_cli("--history", "x", "Hi").stderr)


class StoreTests(unittest.TestCase):
    def setUp(self) -> None:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        self.store = gloo_stream._History(os.path.join(folder, "sub", "history.db"))
        self.addCleanup(self.store.close)

    def keep(self, question: str, answer: str) -> str:
        conversation = self.store.new(question, None)
        self.store.record(conversation, question, gloo_stream.ChatResult(text=answer, model="m"), None)
        return conversation

    def test_search_with_and_without_full_text_search(self):
        wanted = self.keep("What is 100% grace?", "Grace is a_gift.")
        self.keep("Other 1000", "Nothing here, agift")
        for fts in (self.store.fts, False):
            with self.subTest(fts=fts):
                self.store.fts = fts
                self.assertEqual([row[0] for row in self.store.recent("grace")], [wanted])
                self.assertEqual([row[0] for row in self.store.recent("GRACE")], [wanted])  # any case
        self.store.fts = False  # LIKE: % and _ are the characters themselves, never wildcards
        self.assertEqual([row[0] for row in self.store.recent("100%")], [wanted])
        self.assertEqual([row[0] for row in self.store.recent("a_gift")], [wanted])

    def test_a_failed_write_is_a_warning_not_a_failed_answer(self):
        conversation = self.keep("Q", "A")
        self.store.db.close()
        self.store.db = sqlite3.connect(":memory:")  # no tables: every write fails
        with self.assertLogs("gloo_stream", "WARNING") as logs:
            self.store.record(conversation, "Q2", gloo_stream.ChatResult(text="A2"), None)
        self.assertIn("was not saved", logs.output[0])


class ChatCommandTests(HistoryTestCase):
    def test_commands_are_not_questions(self):
        before = len(self.fake.requests)
        proc = self.run_cli("--chat", stdin="/help\n/system Answer in one line.\n/model gloo-openai-gpt-5-nano\n"
                                             "[[echo]] first\n/save out.json\n/reset\n[[echo]] second\n/bogus\n")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for usage in ("/help", "/reset", "/system TEXT", "/model ID", "/save [PATH]", "/exit"):
            self.assertIn(usage, proc.stderr)
        self.assertIn("unknown command /bogus", proc.stderr)
        asked = [r["body"] for r in self.fake.requests[before:]]
        self.assertEqual(len(asked), 2, "only the two questions reached the model")
        self.assertEqual(asked[0]["messages"][0], {"role": "system", "content": "Answer in one line."})
        self.assertEqual(asked[0]["model"], "gloo-openai-gpt-5-nano")
        self.assertEqual(asked[1]["messages"][-1], {"role": "user", "content": "[[echo]] second"})
        self.assertNotIn({"role": "user", "content": "[[echo]] first"}, asked[1]["messages"])  # after /reset
        with open(os.path.join(self.cwd, "out.json"), encoding="utf-8") as handle:
            saved = json.load(handle)
        self.assertEqual([turn["a"] for turn in saved["turns"]], ["first"])
        self.assertEqual(len(self.json_run("--history")["conversations"]), 2)


if __name__ == "__main__":
    unittest.main()
