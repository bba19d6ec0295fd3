"""The command-line tool as a user runs it: a subprocess, its streams and its exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import unittest

from fake_gloo import FakeGloo
from tests.support import clean_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, os.path.join(ROOT, "gloo_stream.py")]


class CLITestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.fake = FakeGloo()
        cls.fake.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.fake.stop()

    def setUp(self) -> None:
        self.cwd = tempfile.mkdtemp()  # no stray .env from the checkout
        self.addCleanup(lambda: __import__("shutil").rmtree(self.cwd, ignore_errors=True))

    def run_cli(self, *args: str, env: dict | None = None, stdin: str | None = None,
                timeout: float = 20) -> subprocess.CompletedProcess:
        environment = clean_environment(self.fake.env if env is None else env)
        return subprocess.run(CLI + list(args), input=stdin, capture_output=True, text=True, timeout=timeout,
                              env=environment, cwd=self.cwd)


class CLIOutputTests(CLITestCase):
    def test_answer_to_stdout_stats_to_stderr(self):
        proc = self.run_cli("What is the significance of the resurrection?")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("resurrection", proc.stdout.lower())
        self.assertTrue(proc.stdout.endswith("\n"))
        self.assertRegex(proc.stderr, r"\[\d+ tokens · first token \d+ ms · \d+ ms · finish_reason=stop\]")
        self.assertNotIn("tokens", proc.stdout.splitlines()[-1][-20:])

    def test_question_from_stdin(self):
        for args in ((), ("-",)):
            with self.subTest(args=args):
                proc = self.run_cli(*args, stdin="[[echo]] piped question\n")
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertIn("piped question", proc.stdout)

    def test_json_output(self):
        proc = self.run_cli("--json", "Hi")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        result = json.loads(proc.stdout)
        self.assertEqual(result["finish_reason"], "stop")
        self.assertGreater(result["token_count"], 0)
        self.assertIsInstance(result["text"], str)

    def test_raw_output_is_the_event_stream(self):
        proc = self.run_cli("--raw", "Hi")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        blocks = [b for b in proc.stdout.split("\n\n") if b]
        self.assertTrue(all(b.startswith("data: ") for b in blocks))
        self.assertEqual(json.loads(blocks[-1][6:])["choices"][0]["finish_reason"], "stop")

    def test_raw_output_of_a_broken_stream_exit_1(self):
        proc = self.run_cli("--raw", "Hi [[drop:2]]")
        self.assertEqual(proc.returncode, 1)
        self.assertTrue(proc.stdout.startswith("data: "))
        self.assertIn("ended before", proc.stderr)

    def test_options_reach_the_request(self):
        proc = self.run_cli("--model-family", "google", "--tradition", "mainline", "--temperature", "0.3",
                            "--max-tokens", "40", "--system", "Be brief.", "Hi there")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        body = self.fake.requests[-1]["body"]
        self.assertEqual((body["model_family"], body["tradition"], body["temperature"], body["max_tokens"]),
                         ("google", "mainline", 0.3, 40))
        self.assertEqual(body["messages"][0], {"role": "system", "content": "Be brief."})

    def test_help(self):
        proc = self.run_cli("--help")
        self.assertEqual(proc.returncode, 0)
        for word in ("--json", "--raw", "--model-family", "--tradition", "GLOO_CLIENT_ID"):
            self.assertIn(word, proc.stdout)


class CLIExitCodeTests(CLITestCase):
    def test_missing_credentials_is_one_line_exit_2(self):
        proc = self.run_cli("Hi", env={})
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
        for name in ("GLOO_CLIENT_ID", "GLOO_CLIENT_SECRET", ".env"):
            self.assertIn(name, proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertEqual(proc.stdout, "")

    def test_credentials_from_dotenv(self):
        with open(os.path.join(self.cwd, ".env"), "w") as handle:
            handle.write("".join(f"export {key}='{value}'\n" for key, value in self.fake.env.items()))
        proc = self.run_cli("Hi", env={})
        self.assertEqual(proc.returncode, 0, proc.stderr)

    def test_usage_errors_exit_2(self):
        for args in (("--temperature", "5", "Hi"), ("--max-tokens", "0", "Hi"), ("--model", "x",
                     "--model-family", "google", "Hi"), ("--bogus",)):
            with self.subTest(args=args):
                self.assertEqual(self.run_cli(*args).returncode, 2)

    def test_api_error_exit_1(self):
        proc = self.run_cli("Hi [[status:403]]")
        self.assertEqual(proc.returncode, 1)
        self.assertIn("Authorization failed (403): Insufficient permissions", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

    def test_stream_error_keeps_partial_text_exit_1(self):
        proc = self.run_cli("Hi [[drop:3]]")
        self.assertEqual(proc.returncode, 1)
        self.assertTrue(proc.stdout.strip())
        self.assertIn("error:", proc.stderr)

    def test_content_filter_exit_1(self):
        proc = self.run_cli("Hi [[content_filter]]")
        self.assertEqual(proc.returncode, 1)
        self.assertIn("content filter", proc.stderr)

    def test_ctrl_c_exit_130(self):
        environment = clean_environment(self.fake.env)
        proc = subprocess.Popen(CLI + ["Hi [[slow:0.1]] [[long:100]]"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=environment, cwd=self.cwd)
        try:
            first = proc.stdout.read(1)  # the stream has begun
            self.assertTrue(first)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        self.assertEqual(proc.returncode, 130)
        self.assertNotIn("Traceback", err)
        self.assertTrue(self.fake.wait_for_disconnect(3))


class SecretTests(CLITestCase):
    def test_no_secret_or_token_in_any_output(self):
        runs = [self.run_cli(*args) for args in (("Hi",), ("--json", "Hi"), ("--raw", "Hi"), ("Hi [[status:500]]",),
                                                   ("Hi [[drop:2]]",), ("Hi [[status:401]]",))]
        secrets = [self.fake.client_secret] + list(self.fake.issued_tokens)
        for proc in runs:
            for secret in secrets:
                self.assertNotIn(secret, proc.stdout)
                self.assertNotIn(secret, proc.stderr)


if __name__ == "__main__":
    unittest.main()
