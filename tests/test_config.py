"""Configuration: .env parsing, precedence, and reading it only when used."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import unittest

import gloo_stream
from gloo_stream import GlooClient, load_dotenv
from tests.support import IsolatedTestCase, clean_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DotenvParseTests(unittest.TestCase):
    CASES = [
        ("plain", "A=1", {"A": "1"}),
        ("spaces around", "  A = hello world  ", {"A": "hello world"}),
        ("comment line", "# A=1\nB=2", {"B": "2"}),
        ("blank lines", "\n\nA=1\n\n", {"A": "1"}),
        ("export prefix", "export A=1", {"A": "1"}),
        ("double quotes", 'A="a # not a comment"', {"A": "a # not a comment"}),
        ("single quotes", "A='x y'", {"A": "x y"}),
        ("escapes in double quotes", r'A="line\nnext \"q\""', {"A": 'line\nnext "q"'}),
        ("no escapes in single quotes", r"A='line\n'", {"A": r"line\n"}),
        ("inline comment", "A=value # note", {"A": "value"}),
        ("hash inside a value", "A=abc#def", {"A": "abc#def"}),
        ("empty value", "A=", {"A": ""}),
        ("equals in value", "A=b=c", {"A": "b=c"}),
        ("CRLF file", "A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
        ("not an assignment", "just text\nA=1", {"A": "1"}),
        ("bad key", "A-B=1\n=2", {}),
        ("last wins", "A=1\nA=2", {"A": "2"}),
    ]

    def test_cases(self):
        for name, text, expected in self.CASES:
            with self.subTest(name):
                self.assertEqual(gloo_stream._parse_dotenv(text), expected)


class LoadDotenvTests(IsolatedTestCase):
    def write_env(self, text: str) -> str:
        folder = tempfile.mkdtemp()
        path = os.path.join(folder, ".env")
        with open(path, "w") as handle:
            handle.write(text)
        self.addCleanup(lambda: __import__("shutil").rmtree(folder, ignore_errors=True))
        return path

    def test_environment_wins(self):
        os.environ["GLOO_CLIENT_ID"] = "from-env"
        path = self.write_env("GLOO_CLIENT_ID=from-file\nGLOO_CLIENT_SECRET=file-secret\n")
        load_dotenv(path)
        self.assertEqual(os.environ["GLOO_CLIENT_ID"], "from-env")
        self.assertEqual(os.environ["GLOO_CLIENT_SECRET"], "file-secret")

    def test_override(self):
        os.environ["GLOO_CLIENT_ID"] = "from-env"
        load_dotenv(self.write_env("GLOO_CLIENT_ID=from-file\n"), override=True)
        self.assertEqual(os.environ["GLOO_CLIENT_ID"], "from-file")

    def test_missing_file_is_fine(self):
        self.assertEqual(load_dotenv(os.path.join(tempfile.gettempdir(), "no-such-dir-x", ".env")), {})

    def test_explicit_argument_beats_environment(self):
        os.environ.update(GLOO_CLIENT_ID="env-id", GLOO_CLIENT_SECRET="env-secret-123",
                          GLOO_API_URL="http://127.0.0.1:9/env")
        client = GlooClient(client_id="arg-id", api_url="http://127.0.0.1:9/arg")
        self.assertEqual(client.api_url, "http://127.0.0.1:9/arg")
        self.assertEqual(client.tokens.client_id, "arg-id")
        self.assertEqual(GlooClient().api_url, "http://127.0.0.1:9/env")

    def test_explicit_credentials_beat_an_api_key_in_the_environment(self):
        os.environ["GLOO_API_KEY"] = "env-api-key-123"
        self.assertIsNotNone(GlooClient(client_id="id", client_secret="secret-123").tokens)
        self.assertIsNone(GlooClient().tokens)  # no explicit credentials: the key is used
        self.assertEqual(GlooClient().token(), "env-api-key-123")

    def test_defaults_are_gloo_production(self):
        os.environ.update(GLOO_CLIENT_ID="id", GLOO_CLIENT_SECRET="secret-123")
        client = GlooClient()
        self.assertEqual(client.api_url, "https://platform.ai.gloo.com/ai/v2/chat/completions")
        self.assertEqual(client.token_url, "https://platform.ai.gloo.com/oauth2/token")

    def test_bad_url_is_a_configuration_error(self):
        with self.assertRaises(gloo_stream.ConfigurationError):
            GlooClient(api_key="k" * 10, api_url="ftp://example.invalid/x")

    def test_repr_never_shows_secrets(self):
        client = GlooClient(client_id="id", client_secret="very-secret-value")
        self.assertNotIn("very-secret-value", repr(client))
        self.assertNotIn("very-secret-value", repr(client.tokens))


class ImportTimeTests(unittest.TestCase):
    def test_import_reads_no_configuration(self):
        # A .env in the working directory is not read at import, and the environment is not touched.
        folder = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(folder, ignore_errors=True))
        with open(os.path.join(folder, ".env"), "w") as handle:
            handle.write("GLOO_CLIENT_ID=from-dotenv\n")
        code = ("import sys, os; sys.path.insert(0, %r); import gloo_stream, proxy_server; "
                "print(os.environ.get('GLOO_CLIENT_ID', 'unset'))" % ROOT)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=folder,
                              env=clean_environment(), timeout=20)
        self.assertEqual(proc.stdout.strip(), "unset", proc.stderr)

    def test_modules_import_only_the_standard_library(self):
        code = ("import sys; sys.path.insert(0, %r); before = set(sys.modules); "
                "import gloo_stream, proxy_server, fake_gloo, demo; "
                "mods = {m.split('.')[0] for m in set(sys.modules) - before}; "
                "local = {'gloo_stream', 'proxy_server', 'fake_gloo', 'demo'}; "
                "std = set(sys.stdlib_module_names) if hasattr(sys, 'stdlib_module_names') else mods; "
                "print(sorted(m for m in mods - local if m not in std and not m.startswith('_')))" % ROOT)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=clean_environment(), timeout=20)
        self.assertEqual(proc.stdout.strip(), "[]", proc.stderr)


if __name__ == "__main__":
    unittest.main()
