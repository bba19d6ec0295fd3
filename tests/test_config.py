"""Configuration: .env parsing, precedence, and reading it only when used."""

from __future__ import annotations

import os
import shutil
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

    def test_a_dotenv_cannot_redirect_an_exported_secret(self):
        # #19.11: the secret exported, the token URL only in ./.env: the secret would go to the .env's server.
        os.environ.update(GLOO_CLIENT_ID="id", GLOO_CLIENT_SECRET="exported-secret-0001")
        for endpoint in ("GLOO_TOKEN_URL=http://127.0.0.1:9/steal", "HTTPS_PROXY=http://127.0.0.1:9",
                         "GLOO_API_URL=http://127.0.0.1:9/v2/chat/completions"):
            with self.subTest(endpoint):
                path = self.write_env(endpoint + "\nGLOO_TRADITION_NOTE=x\n")
                with self.assertRaises(gloo_stream.ConfigurationError) as caught:
                    load_dotenv(path)
                message = str(caught.exception)
                self.assertIn(f"sets {endpoint.split('=')[0]}, and GLOO_CLIENT_SECRET comes from the environment",
                              message)
                self.assertNotIn("exported-secret-0001", message)
                self.assertNotIn("GLOO_TRADITION_NOTE", os.environ)  # nothing of that file was applied
        # Both from the .env, or the endpoint exported too: fine.
        os.environ["GLOO_TOKEN_URL"] = "http://127.0.0.1:9/mine"
        load_dotenv(self.write_env("GLOO_TOKEN_URL=http://127.0.0.1:9/other\n"))
        self.assertEqual(os.environ["GLOO_TOKEN_URL"], "http://127.0.0.1:9/mine")
        del os.environ["GLOO_CLIENT_SECRET"], os.environ["GLOO_TOKEN_URL"]
        load_dotenv(self.write_env("GLOO_CLIENT_SECRET=file-secret-0001\nGLOO_TOKEN_URL=http://127.0.0.1:9/t\n"))
        self.assertEqual(os.environ["GLOO_TOKEN_URL"], "http://127.0.0.1:9/t")

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
        code = (f"import sys, os; sys.path.insert(0, {ROOT!r}); import gloo_stream, proxy_server; "
                "print(os.environ.get('GLOO_CLIENT_ID', 'unset'))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=folder,
                              env=clean_environment(), timeout=20)
        self.assertEqual(proc.stdout.strip(), "unset", proc.stderr)

    def test_modules_import_only_the_standard_library(self):
        code = (f"import sys; sys.path.insert(0, {ROOT!r}); before = set(sys.modules); "
                "import gloo_stream, proxy_server, fake_gloo, demo; "
                "mods = {m.split('.')[0] for m in set(sys.modules) - before}; "
                "local = {'gloo_stream', 'proxy_server', 'fake_gloo', 'demo'}; "
                "std = set(sys.stdlib_module_names) if hasattr(sys, 'stdlib_module_names') else mods; "
                "print(sorted(m for m in mods - local if m not in std and not m.startswith('_')))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=clean_environment(), timeout=20)
        self.assertEqual(proc.stdout.strip(), "[]", proc.stderr)


class DotenvFileTests(IsolatedTestCase):
    """.env as people really write it: BOMs, CRLF, stray lines, copied examples, other encodings."""

    def write_env(self, data: bytes) -> str:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, ".env")
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    def test_bom_and_crlf(self):
        for data in (b"\xef\xbb\xbfGLOO_CLIENT_ID=id-1\r\nGLOO_CLIENT_SECRET=s-1\r\n",
                     b"\xef\xbb\xbfGLOO_CLIENT_ID=id-1\rGLOO_CLIENT_SECRET=s-1",
                     b"GLOO_CLIENT_ID=id-1\nGLOO_CLIENT_SECRET=s-1\n"):
            with self.subTest(data=data):
                os.environ.pop("GLOO_CLIENT_ID", None)
                os.environ.pop("GLOO_CLIENT_SECRET", None)
                self.assertEqual(load_dotenv(self.write_env(data)),
                                 {"GLOO_CLIENT_ID": "id-1", "GLOO_CLIENT_SECRET": "s-1"})
                self.assertEqual(os.environ["GLOO_CLIENT_ID"], "id-1")

    def test_a_line_without_equals_is_warned_with_its_number(self):
        path = self.write_env(b"# comment\nGLOO_CLIENT_ID=id-1\nGLOO_CLIENT_SECRET s-1\nA-B=1\nC=\"open\n")
        with self.assertLogs("gloo_stream", "WARNING") as logs:
            values = load_dotenv(path)
        self.assertEqual(values, {"GLOO_CLIENT_ID": "id-1", "C": "open"})
        self.assertEqual(logs.output, [
            f"WARNING:gloo_stream:{path} line 3: no '=' (expected KEY=VALUE); ignored",
            f"WARNING:gloo_stream:{path} line 4: 'A-B' is not a variable name; ignored",
            f"WARNING:gloo_stream:{path} line 5: the \" quote is never closed; the value runs to the line's end",
        ])

    def test_parse_reports_problems(self):
        problems: list = []
        self.assertEqual(gloo_stream._parse_dotenv("\ufeffA=1\r\nnot an assignment\r\n", problems=problems),
                         {"A": "1"})
        self.assertEqual(problems, [(2, "no '=' (expected KEY=VALUE); ignored")])

    def test_copied_example_counts_as_missing(self):
        with open(os.path.join(ROOT, ".env.example"), "rb") as handle:
            path = self.write_env(handle.read())
        with self.assertLogs("gloo_stream", "WARNING") as logs:
            values = load_dotenv(path)
        self.assertNotIn("GLOO_CLIENT_ID", values)
        self.assertNotIn("GLOO_CLIENT_ID", os.environ)
        self.assertNotIn("GLOO_CLIENT_SECRET", os.environ)
        self.assertIn("GLOO_CLIENT_ID, GLOO_CLIENT_SECRET still hold the example values from .env.example; "
                      "treated as unset", logs.output[-1])
        self.assertFalse(gloo_stream.have_credentials())
        message = gloo_stream._credentials_help()
        self.assertIn(f"{path} still holds the placeholder values from .env.example for "
                      "GLOO_CLIENT_ID, GLOO_CLIENT_SECRET", message)
        with self.assertRaises(gloo_stream.ConfigurationError):
            GlooClient()

    def test_placeholders_in_the_environment_count_as_missing(self):
        os.environ.update(GLOO_CLIENT_ID="your-client-id", GLOO_CLIENT_SECRET="<your secret>")
        self.assertIsNone(gloo_stream._setting(None, "GLOO_CLIENT_ID"))
        self.assertFalse(gloo_stream.have_credentials())
        self.assertIn("the environment holds placeholder values for GLOO_CLIENT_ID, GLOO_CLIENT_SECRET",
                      gloo_stream._credentials_help())
        self.assertEqual(gloo_stream._setting("your-client-id", "GLOO_CLIENT_ID"), "your-client-id")  # explicit wins

    def test_not_utf8_names_the_file_and_line(self):
        path = self.write_env(b"A=1\r\nB=caf\xe9\r\n")
        with self.assertRaises(gloo_stream.ConfigurationError) as caught:
            load_dotenv(path)
        self.assertEqual(str(caught.exception),
                         f"{path} line 2 is not UTF-8 text (byte 0xe9): save the file as UTF-8")

    def test_unreadable_names_the_path(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        os.mkdir(os.path.join(folder, ".env"))  # a directory where the file should be
        with self.assertRaises(gloo_stream.ConfigurationError) as caught:
            load_dotenv(os.path.join(folder, ".env"))
        self.assertIn(os.path.join(folder, ".env"), str(caught.exception))

    def test_missing_file_names_the_folder(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        load_dotenv(os.path.join(folder, ".env"))
        self.assertIn(f"there is no .env in {folder}", gloo_stream._credentials_help())


class DotenvToolTests(unittest.TestCase):
    """The tools with a troublesome .env in the folder they run from."""

    def run_in(self, data: bytes, *command: str) -> subprocess.CompletedProcess:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        with open(os.path.join(folder, ".env"), "wb") as handle:
            handle.write(data)
        return subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=folder, timeout=60,
                              env=clean_environment(), stdin=subprocess.DEVNULL)

    def example(self) -> bytes:
        with open(os.path.join(ROOT, ".env.example"), "rb") as handle:
            return handle.read()

    def test_cli_with_the_copied_example(self):
        proc = self.run_in(self.example(), os.path.join(ROOT, "gloo_stream.py"), "Hi")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("still hold the example values from .env.example; treated as unset", proc.stderr)
        self.assertIn("placeholder values from .env.example", proc.stderr)
        self.assertIn("--offline", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

    def test_cli_with_a_non_utf8_env(self):
        proc = self.run_in(b"GLOO_CLIENT_ID=caf\xe9\n", os.path.join(ROOT, "gloo_stream.py"), "Hi")
        self.assertEqual(proc.returncode, 2)
        self.assertRegex(proc.stderr,
                         r"^error: .*\.env line 1 is not UTF-8 text \(byte 0xe9\): save the file as UTF-8\n$")

    def test_demo_with_the_copied_example_uses_the_simulator(self):
        proc = self.run_in(self.example(), os.path.join(ROOT, "demo.py"), "--delay", "0")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("simulator", proc.stdout)


if __name__ == "__main__":
    unittest.main()
