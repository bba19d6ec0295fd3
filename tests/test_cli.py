"""The command-line tool as a user runs it: a subprocess, its streams and its exit codes."""

from __future__ import annotations

import ast
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

import gloo_stream
from gloo_stream import GlooClient
import fake_gloo
from fake_gloo import FakeGloo
from tests.support import CLI, CLI_SCRIPT, SCRIPT_CLI, clean_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        return subprocess.run(CLI + list(args), input=stdin if stdin is not None else "", capture_output=True,
                              text=True, timeout=timeout, env=environment, cwd=self.cwd)


class CLIOutputTests(CLITestCase):
    def test_answer_to_stdout_stats_to_stderr(self):
        proc = self.run_cli("What is the significance of the resurrection?")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("resurrection", proc.stdout.lower())
        self.assertTrue(proc.stdout.endswith("\n"))
        self.assertRegex(proc.stderr, r"\[\d+ tokens · first token \d+ ms · \d+ ms · finish_reason=stop\]")
        self.assertNotIn("tokens", proc.stdout.splitlines()[-1][-20:])

    def test_usage_is_asked_for_and_shown(self):
        plain = self.run_cli("--json", "Hi")
        asked = self.run_cli("--json", "--usage", "Hi")
        self.assertIsNone(json.loads(plain.stdout)["usage"])  # Gloo sends usage only when asked
        usage = json.loads(asked.stdout)["usage"]
        self.assertEqual(usage["total_tokens"], usage["prompt_tokens"] + usage["completion_tokens"])
        shown = self.run_cli("--usage", "Hi")
        self.assertRegex(shown.stderr, r"· usage \d+ in / \d+ out · \$0\.[0-9]+ · finish_reason=stop\]")

    def test_the_answers_cost_from_the_catalogs_prices(self):
        prices = {m["id"]: (m["input_per_million"], m["output_per_million"]) for m in fake_gloo._CATALOG}
        result = json.loads(self.run_cli("--json", "--usage", "--model", "gloo-openai-gpt-5-nano", "Hi").stdout)
        usage, (into, out) = result["usage"], prices["gloo-openai-gpt-5-nano"]
        expected = (usage["prompt_tokens"] * into + usage["completion_tokens"] * out) / 1e6
        self.assertAlmostEqual(result["cost_usd"], expected, places=12)
        self.assertIsNone(json.loads(self.run_cli("--json", "Hi").stdout)["cost_usd"], "no usage asked: no cost")

    def test_list_models_is_the_catalog(self):
        proc = self.run_cli("--list-models")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        lines = proc.stdout.splitlines()
        self.assertEqual(lines[0].split()[:3], ["ID", "FAMILY", "CONTEXT"])
        self.assertEqual([line.split()[0] for line in lines[1:]], [m["id"] for m in fake_gloo._CATALOG])
        nano = next(line for line in lines if line.startswith("gloo-openai-gpt-5-nano "))
        self.assertEqual(nano.split()[1:], ["openai", "400,000", "chat,tools,responses", "$0.05", "/", "$0.4"])
        listed = json.loads(self.run_cli("--list-models", "--json").stdout)
        self.assertEqual(len(listed["models"]), len(fake_gloo._CATALOG))
        self.assertEqual(listed["models"][1]["input_price"], 0.05)
        refused = self.run_cli("--list-models", "Hi")
        self.assertEqual(refused.returncode, 2)
        self.assertIn("--list-models takes no question", refused.stderr)

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

    def test_an_answer_cut_at_the_token_limit_says_so(self):
        proc = self.run_cli("--max-tokens", "3", "[[echo]] one two three four five")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertRegex(proc.stderr, r"finish_reason=length\]\nnote: the answer stopped at the token limit; "
                                      r"--max-tokens allows more\n$")

    def test_help(self):
        proc = self.run_cli("--help")
        self.assertEqual(proc.returncode, 0)
        for word in ("--json", "--raw", "--model-family", "--tradition", "GLOO_CLIENT_ID"):
            self.assertIn(word, proc.stdout)


class CLIExitCodeTests(CLITestCase):
    def test_missing_credentials_is_one_line_and_a_hint_exit_2(self):
        proc = self.run_cli("Hi", env={})
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 2, proc.stderr)
        self.assertEqual(proc.stderr.splitlines()[1],
                         'hint: to try it without credentials, add --offline: python gloo_stream.py --offline "Hi"')
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
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=environment,
                                cwd=self.cwd)
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
        cases = [("Hi",), ("--json", "Hi"), ("--raw", "Hi"), ("Hi [[status:500]]",), ("Hi [[drop:2]]",),
                 ("Hi [[status:401]]",)]
        with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:  # independent runs: at once
            runs = list(pool.map(lambda args: self.run_cli(*args), cases))
        self.assertEqual([proc.returncode for proc in runs], [0, 0, 0, 1, 1, 1])
        secrets = [self.fake.client_secret] + list(self.fake.issued_tokens)
        for proc in runs:
            for secret in secrets:
                self.assertNotIn(secret, proc.stdout)
                self.assertNotIn(secret, proc.stderr)


def _pty_pair(columns: int = 80, rows: int = 24) -> tuple:
    """A pseudo-terminal (master, slave) of the given size, so a child sees a real terminal."""
    if os.name != "posix":
        raise unittest.SkipTest("pseudo-terminals need POSIX")
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return master, slave


def _read_all(fd: int, timeout: float = 20.0) -> bytes:
    """Everything a pty master receives until the child side closes (bounded by `timeout`)."""
    import select

    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: every slave end is closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


class CLIPipeTests(CLITestCase):
    """Broken pipes, Ctrl-C into a pipeline, and stdout encodings."""

    def test_a_reader_gone_before_the_last_flush_is_quiet(self):
        # The race at exit: the answer is in stdout's buffer, the reader leaves, then the interpreter
        # flushes. _finish_output() flushes first and points stdout at /dev/null when the pipe is gone.
        read_end, write_end = os.pipe()
        stream = os.fdopen(write_end, "w", buffering=8192)
        self.addCleanup(stream.close)
        stream.write("the last words of the answer\n")  # buffered, not yet written
        os.close(read_end)
        gloo_stream._finish_output(stream)  # no BrokenPipeError
        stream.write("more")
        stream.flush()  # now goes to /dev/null
        self.assertEqual(os.readlink(f"/proc/self/fd/{stream.fileno()}"), os.devnull)

    def popen(self, *args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
        environment = clean_environment(self.fake.env if env is None else env)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(SCRIPT_CLI + list(args), env=environment, cwd=self.cwd, **kwargs)

    def finish(self, proc: subprocess.Popen, timeout: float = 15) -> bytes:
        try:
            _, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return err or b""

    def test_reader_that_stops_early_ends_quietly_exit_0(self):
        # `| head -c 20`: the reader takes a few bytes and goes away while the answer streams.
        for args in (("Hi [[slow:0.01]] [[long:400]]",), ("--raw", "Hi [[slow:0.01]] [[long:400]]")):
            with self.subTest(args=args):
                proc = self.popen(*args)
                self.assertEqual(len(proc.stdout.read(20)), 20)
                proc.stdout.close()
                err = self.finish(proc)
                self.assertEqual((proc.returncode, err), (0, b""))
                self.assertTrue(self.fake.wait_for_disconnect(5))

    def test_reader_gone_before_the_first_byte_exit_0(self):
        for args in (("Hi",), ("--help",), ("--json", "Hi")):
            with self.subTest(args=args):
                read_end, write_end = os.pipe()
                os.close(read_end)
                proc = self.popen(*args, stdout=write_end)
                os.close(write_end)
                err = self.finish(proc)
                self.assertEqual((proc.returncode, err), (0, b""))

    def test_ctrl_c_into_a_pipeline_to_tee(self):
        # Ctrl-C signals the whole foreground pipeline: tee dies too, so writing the last newline fails.
        tee = shutil.which("tee")
        if tee is None:
            self.skipTest("no tee")
        for attempt in range(3):  # the old double traceback came in about half of all runs
            with self.subTest(attempt=attempt):
                path = os.path.join(self.cwd, f"answer{attempt}.txt")
                want = 1 + attempt * 40
                # a process group of its own, as a shell makes for a pipeline; tee joins it
                cli = self.popen("Hi [[slow:0.02]] [[long:2000]]", preexec_fn=lambda: os.setpgid(0, 0))
                group = cli.pid
                pipe = subprocess.Popen([tee, path], stdin=cli.stdout, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=lambda group=group: os.setpgid(0, group))
                cli.stdout.close()
                try:
                    deadline = time.monotonic() + 10
                    while not os.path.exists(path) or os.path.getsize(path) < want:  # the answer is streaming
                        self.assertLess(time.monotonic(), deadline)
                        time.sleep(0.005)
                    os.killpg(group, signal.SIGINT)
                    err = self.finish(cli).decode()
                    pipe.wait(timeout=10)
                finally:
                    for proc in (cli, pipe):
                        if proc.poll() is None:
                            proc.kill()
                            proc.wait()
                self.assertEqual(cli.returncode, 130, err)
                self.assertEqual(err.strip(), "interrupted")
                self.assertEqual(pipe.returncode, -signal.SIGINT)  # tee went with it, as in a shell
                with open(path, encoding="utf-8") as handle:
                    self.assertGreaterEqual(len(handle.read()), want)  # the partial answer is kept

    def test_ctrl_c_with_json_prints_the_partial_result(self):
        before = len(self.fake.requests)
        proc = self.popen("--json", "Hi [[slow:0.05]] [[long:200]]")
        try:
            deadline = time.monotonic() + 10
            while len(self.fake.requests) == before:  # the stream has been asked for
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.01)
            time.sleep(0.3)  # let a few tokens arrive (not an assertion)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.assertEqual(proc.returncode, 130, err)
        self.assertEqual(len(out.splitlines()), 1)
        result = json.loads(out)
        self.assertEqual((result["error"], result["exit_code"], result["error_type"]),
                         ("interrupted", 130, "KeyboardInterrupt"))
        self.assertTrue(result["text"])  # the partial answer
        self.assertEqual(err, b"interrupted\n")

    def test_any_stdout_encoding(self):
        from fake_gloo import _UTF8_ANSWER

        for encoding in ("ascii", "cp1252", "latin-1"):
            with self.subTest(encoding=encoding):
                env = clean_environment(dict(self.fake.env, PYTHONIOENCODING=encoding))
                for args in (("Hi [[split_utf8]]",), ("--json", "Hi [[split_utf8]]")):
                    proc = subprocess.run(CLI + list(args), capture_output=True, timeout=20, env=env, cwd=self.cwd,
                                          stdin=subprocess.DEVNULL)
                    self.assertEqual(proc.returncode, 0, proc.stderr)
                    self.assertNotIn(b"Traceback", proc.stderr)
                    if args[0] == "--json":  # \u escapes: nothing lost
                        self.assertEqual(json.loads(proc.stdout.decode(encoding))["text"], _UTF8_ANSWER)
                    else:
                        self.assertEqual(proc.stdout, _UTF8_ANSWER.encode(encoding, "replace") + b"\n")


    def test_a_lone_surrogate_in_the_answer_is_replaced(self):
        # "\ud800" is valid JSON, but no encoding can write it: even UTF-8 with surrogateescape fails.
        for encoding in ("utf-8", "utf-8:surrogateescape", "ascii"):
            with self.subTest(encoding=encoding):
                self.fake.enqueue(headers={"Content-Type": "text/event-stream"}, writes=[
                    b'data: {"choices":[{"index":0,"delta":{"content":"a\\ud800b"},"finish_reason":"stop"}]}\n\n'])
                proc = subprocess.run(CLI + ["Hi"], capture_output=True, timeout=20, cwd=self.cwd,
                                      stdin=subprocess.DEVNULL,
                                      env=clean_environment(dict(self.fake.env, PYTHONIOENCODING=encoding)))
                self.assertEqual((proc.returncode, proc.stdout), (0, b"a?b\n"), proc.stderr)


class CLIUsageTests(unittest.TestCase):
    """Every bad option value is a usage error (exit 2) that names the accepted range."""

    CASES = [
        (("--timeout", "-1"), "more than 0 and at most 86400"),
        (("--timeout", "0"), "more than 0 and at most 86400"),
        (("--timeout", "nan"), "more than 0 and at most 86400"),
        (("--timeout", "inf"), "more than 0 and at most 86400"),
        (("--timeout=-inf",), "more than 0 and at most 86400"),
        (("--timeout", "soon"), "more than 0 and at most 86400"),
        (("--timeout", "86401"), "more than 0 and at most 86400"),
        (("--temperature", "-0.1"), "at least 0 and at most 2"),
        (("--temperature", "2.5"), "at least 0 and at most 2"),
        (("--temperature", "nan"), "at least 0 and at most 2"),
        (("--max-tokens", "0"), "from 1 to 1000000"),
        (("--max-tokens", "-5"), "from 1 to 1000000"),
        (("--max-tokens", "1.5"), "from 1 to 1000000"),
        (("--sources", "0"), "from 1 to 10"),
        (("--sources", "11"), "from 1 to 10"),
        (("--publisher", ""), "1 to 200 printable characters"),
        (("--publisher", "a\x1bb"), "1 to 200 printable characters"),
        (("--model", " "), "1 to 200 printable characters"),
        (("--model-family", "open_source"), "choose from"),
        (("--tradition", "other"), "choose from"),
    ]

    def run_main(self, *args: str) -> tuple:
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = gloo_stream.main(list(args))
        return code, out.getvalue(), err.getvalue()

    def test_bad_values(self):
        for args, words in self.CASES:
            with self.subTest(args=args):
                code, out, err = self.run_main(*args, "Hi")
                self.assertEqual(code, 2)
                self.assertEqual(out, "")
                self.assertIn(words, err)
                self.assertEqual(err.splitlines()[0], "usage: gloo_stream.py [options] [question]")
                option = args[0].split("=")[0]
                self.assertTrue(err.splitlines()[1].startswith(f"gloo_stream.py: error: argument {option}"), err)
                self.assertEqual(len(err.splitlines()), 2)

    def test_bad_value_with_json_is_one_json_object(self):
        code, out, err = self.run_main("--json", "--timeout", "-1", "Hi")
        self.assertEqual(code, 2)
        result = json.loads(out)
        self.assertEqual((result["exit_code"], result["error_type"], result["text"]), (2, "UsageError", ""))
        self.assertIn("more than 0 and at most 86400", result["error"])

    def test_good_edges_are_accepted(self):
        parser = gloo_stream._build_parser()
        args = parser.parse_args(["--timeout", "86400", "--temperature", "0", "--max-tokens", "1",
                                  "--sources", "10", "Hi"])
        self.assertEqual((args.timeout, args.temperature, args.max_tokens, args.sources), (86400.0, 0.0, 1, 10))
        self.assertEqual(parser.parse_args(["--timeout", "0.5", "--temperature", "2", "x"]).timeout, 0.5)

    def test_subprocess_bad_timeout_has_no_traceback(self):
        proc = subprocess.run(CLI + ["--timeout", "nan", "Hi"], capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL, env=clean_environment())
        self.assertEqual(proc.returncode, 2)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertIn("--timeout: expected a number of seconds more than 0 and at most 86400, not 'nan'", proc.stderr)


class CLITerminalSafetyTests(CLITestCase):
    """Escape sequences from the model or from error text never reach a terminal as sequences."""

    HOSTILE = ("a\x1b]0;PWNED\x07b \x1b]52;c;SGVsbG8=\x07 \x1b[8mhidden\x1b[0m \x1bP1$r\x1b\\ \x9b31m "
               "bell\x07 back\x08 cr\rover tab\tok")
    SHOWN = ("a^[]0;PWNED^Gb ^[]52;c;SGVsbG8=^G ^[[8mhidden^[[0m ^[P1$r^[\\ M-^[31m "
             "bell^G back^H cr^Mover tab\tok")

    def test_escape_sequences_in_the_answer_are_shown_not_obeyed(self):
        proc = self.run_cli("[[echo]] " + self.HOSTILE)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, self.SHOWN + "\n")

    def test_terminal_safe_table(self):
        cases = [("plain", "plain"), ("line\nnext", "line\nnext"), ("crlf\r\nnext", "crlf\nnext"),
                 ("\x00\x7f", "^@^?"), ("\x1b[31mred", "^[[31mred"), ("\u009d8;;http://x\u009c", "M-^]8;;http://xM-^\\"),
                 ("é 愛 🙏", "é 愛 🙏"), ("a\u202eb\u2066c\u200fd", "a<U+202E>b<U+2066>c\u200fd")]
        for text, shown in cases:
            with self.subTest(text=text):
                self.assertEqual(gloo_stream._terminal_safe(text), shown)
        safe = gloo_stream._SafeText()  # a CRLF split across two deltas stays a newline
        self.assertEqual(safe.feed("a\r") + safe.feed("\nb\r") + safe.feed("c") + safe.feed("\r") + safe.flush(),
                         "a\nb^Mc^M")

    def test_json_output_has_no_raw_control_characters(self):
        proc = self.run_cli("--json", "[[echo]] " + self.HOSTILE)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertFalse(any(0x7F <= ord(c) <= 0x9F or ord(c) < 0x20 for c in proc.stdout.rstrip("\n")))
        self.assertEqual(json.loads(proc.stdout)["text"], self.HOSTILE)

    def test_escape_sequences_in_error_text_are_shown(self):
        self.fake.enqueue(status=400, headers={"Content-Type": "text/plain"},
                          writes=[b"\x1b]0;PWNED\x07 bad \x1b[8mhidden"])
        proc = self.run_cli("Hi")
        self.assertEqual(proc.returncode, 1)
        self.assertNotIn("\x1b", proc.stderr)
        self.assertIn("^[]0;PWNED^G bad ^[[8mhidden", proc.stderr)

    def scripted_stream(self) -> bytes:
        writes = [b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n',
                  b'data: \x1b]0;PWNED\x07\x1b[2J\r\n\r\n',
                  b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n']
        self.fake.enqueue(headers={"Content-Type": "text/event-stream"}, writes=writes)
        return b"".join(writes)

    def test_raw_to_a_pipe_is_the_bytes_as_received(self):
        body = self.scripted_stream()
        proc = subprocess.run(CLI + ["--raw", "Hi"], capture_output=True, timeout=20, stdin=subprocess.DEVNULL,
                              env=clean_environment(self.fake.env), cwd=self.cwd)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, body)
        self.assertIn(b"finish_reason=stop", proc.stderr)

    def test_raw_to_a_terminal_is_made_safe(self):
        self.scripted_stream()
        master, slave = _pty_pair()
        try:
            proc = subprocess.Popen(CLI + ["--raw", "Hi"], stdin=subprocess.DEVNULL, stdout=slave,
                                    stderr=subprocess.PIPE, env=clean_environment(self.fake.env), cwd=self.cwd)
            os.close(slave)
            shown = _read_all(master)
            proc.communicate(timeout=10)
        finally:
            os.close(master)
        self.assertEqual(proc.returncode, 0)
        self.assertNotIn(b"\x1b", shown)
        self.assertNotIn(b"\x07", shown)
        self.assertIn(b"data: ^[]0;PWNED^G^[[2J", shown)

    def test_colour_only_on_a_terminal_without_no_color_or_term_dumb(self):
        cases = [({"TERM": "xterm"}, True), ({"TERM": "xterm", "NO_COLOR": "1"}, False), ({"TERM": "dumb"}, False)]

        def run(extra: dict) -> tuple:
            master, slave = _pty_pair()
            try:
                proc = subprocess.Popen(CLI + ["--max-tokens", "2", "Hi [[slow:0.25]]"], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=slave,
                                        env=clean_environment(dict(self.fake.env, **extra)), cwd=self.cwd)
                os.close(slave)
                shown = _read_all(master).decode()
                proc.communicate(timeout=10)
            finally:
                os.close(master)
            return proc.returncode, shown

        with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:  # independent terminals: at once
            runs = list(pool.map(run, [extra for extra, _ in cases]))
        for (extra, coloured), (returncode, shown) in zip(cases, runs):
            with self.subTest(extra=extra):
                self.assertEqual(returncode, 0, shown)
                self.assertEqual("\x1b" in shown, coloured, repr(shown))
                self.assertEqual("waiting for the first token" in shown, extra["TERM"] != "dumb", repr(shown))

    def test_spinner_fits_a_narrow_terminal(self):
        master, slave = _pty_pair(columns=20)
        try:
            proc = subprocess.Popen(CLI + ["--max-tokens", "1", "Hi [[slow:0.6]]"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=slave,
                                    env=clean_environment(dict(self.fake.env, TERM="xterm", NO_COLOR="1")),
                                    cwd=self.cwd)
            os.close(slave)
            shown = _read_all(master).decode()
            proc.communicate(timeout=10)
        finally:
            os.close(master)
        frames = [part for part in shown.replace("\r\n", "\n").split("\r") if part.strip() and "\n" not in part]
        self.assertIn("| waiting for the f", frames)  # 19 characters: the last column stays free
        self.assertTrue(all(len(frame) <= 19 for frame in frames), frames)

    def test_spinner_line_never_passes_the_width(self):
        spinner = gloo_stream._Spinner(None, color=False)
        for columns in range(0, 90):
            for elapsed in (0, 5, 12345):
                with self.subTest(columns=columns, elapsed=elapsed):
                    self.assertLessEqual(len(spinner.line(3, elapsed, columns)), max(columns - 1, 0))


class CLIScriptTests(CLITestCase):
    """stdin joined with the question, --json always one object, --offline, --chat."""

    def run_bytes(self, *args: str, stdin: bytes, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(CLI + list(args), input=stdin, capture_output=True, timeout=20, cwd=self.cwd,
                              env=clean_environment(self.fake.env if env is None else env))

    def test_question_then_piped_text(self):
        proc = self.run_cli("[[echo]] Summarise this:", stdin="line one\nline two\n")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, "Summarise this:\n\nline one\nline two\n")
        self.assertEqual(self.fake.requests[-1]["body"]["messages"][-1]["content"],
                         "[[echo]] Summarise this:\n\nline one\nline two")

    def test_empty_stdin_leaves_the_question_alone(self):
        proc = self.run_cli("[[echo]] Only me", stdin="")
        self.assertEqual(proc.stdout, "Only me\n")

    def test_invalid_utf8_on_stdin_is_a_usage_error(self):
        proc = self.run_bytes("Summarise", stdin=b"caf\xe9 au lait\n")
        self.assertEqual(proc.returncode, 2)
        self.assertIn(b"stdin is not UTF-8 text (byte 0xe9 at offset 3)", proc.stderr)
        self.assertNotIn(b"Traceback", proc.stderr)
        self.assertEqual(self.fake.requests and self.fake.requests[-1]["body"]["messages"][-1]["content"]
                         == "Summarise", False)

    def test_json_is_one_object_for_every_ending(self):
        cases = [(("--json", "Hi"), self.fake.env, 0, None),
                 (("--json", "Hi [[status:403]]"), self.fake.env, 1, "PermissionDeniedError"),
                 (("--json", "Hi [[drop:2]]"), self.fake.env, 1, "ConnectionLostError"),
                 (("--json", "Hi [[error]]"), self.fake.env, 1, "ProviderError"),
                 (("--json", "Hi"), {}, 2, "ConfigurationError"),
                 (("--json", "--sources", "99", "Hi"), self.fake.env, 2, "UsageError")]
        for args, env, code, error_type in cases:
            with self.subTest(args=args, code=code):
                proc = self.run_cli(*args, env=env)
                self.assertEqual(proc.returncode, code, proc.stderr)
                self.assertEqual(len(proc.stdout.splitlines()), 1, proc.stdout)
                result = json.loads(proc.stdout)
                self.assertEqual((result["exit_code"], result["error_type"]), (code, error_type))
                self.assertEqual(result["error"] is None, code == 0)
        self.assertEqual(json.loads(self.run_cli("--json", "Hi [[status:403]]").stdout)["status"], 403)

    def test_missing_credentials_mention_offline_and_the_folder(self):
        proc = self.run_cli("Hi", env={})
        self.assertEqual(proc.returncode, 2)
        self.assertIn("--offline", proc.stderr)
        self.assertIn(f"(there is no .env in {self.cwd})", proc.stderr)

    def test_offline_needs_no_credentials(self):
        for flags in ((), ("-I",)):
            with self.subTest(flags=flags):
                proc = subprocess.run([sys.executable, *flags, CLI_SCRIPT, "--offline", "[[echo]] Offline works"],
                                      capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
                                      env=clean_environment(), cwd=self.cwd)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertEqual(proc.stdout, "Offline works\n")
                self.assertIn("built-in simulator", proc.stderr)

    def test_offline_without_the_simulator_says_how(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        shutil.copy(CLI_SCRIPT, folder)
        proc = subprocess.run([sys.executable, os.path.join(folder, "gloo_stream.py"), "--offline", "Hi"],
                              capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
                              env=clean_environment(), cwd=self.cwd)
        self.assertEqual(proc.returncode, 2)
        self.assertIn(f"--offline needs fake_gloo.py beside gloo_stream.py, and {folder} has none", proc.stderr)
        self.assertIn("GLOO_API_URL", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

    def test_chat_keeps_the_conversation(self):
        proc = self.run_cli("--chat", stdin="[[echo]] first question\n\n[[echo]] second question\n")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, "first question\nsecond question\n")
        messages = self.fake.requests[-1]["body"]["messages"]
        self.assertEqual([m["role"] for m in messages], ["user", "assistant", "user"])
        self.assertEqual(messages[1]["content"], "first question")

    def test_chat_goes_on_after_a_failed_turn(self):
        proc = self.run_cli("--chat", stdin="Hi [[status:400]]\n[[echo]] again\n/exit\n[[echo]] never\n")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, "again\n")
        self.assertIn("error:", proc.stderr)
        self.assertEqual([m["role"] for m in self.fake.requests[-1]["body"]["messages"]], ["user"])


class CLIGroundedTests(CLITestCase):
    """--publisher / --sources for grounded answers, --endpoint for the guarded one (issue #10)."""

    def test_grounded_answer_prints_sources_after_it(self):
        proc = self.run_cli("--publisher", "GlooGrounded", "--sources", "2", "What is grace?")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        request = self.fake.requests[-1]
        self.assertEqual(request["path"], "/ai/v2/chat/completions/grounded")
        self.assertEqual((request["body"]["rag_publisher"], request["body"]["sources_limit"]), ("GlooGrounded", 2))
        lines = proc.stderr.splitlines()
        self.assertEqual(lines[0], "Sources:")
        self.assertRegex(lines[1], r"^  \[1\] .+ \(GlooGrounded\) - https://")
        self.assertRegex(lines[2], r"^  \[2\] .+ - https://")
        self.assertRegex(lines[3], r"^\[\d+ tokens")
        self.assertNotIn("http", proc.stdout)  # the answer alone on stdout

    def test_grounded_json_carries_the_sources(self):
        proc = self.run_cli("--json", "--sources", "1", "What is grace?")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        result = json.loads(proc.stdout)
        self.assertEqual(len(result["sources"]), 1)
        self.assertTrue(result["sources"][0]["url"].startswith("https://"))
        self.assertIs(result["sources_returned"], True)
        self.assertNotIn("Sources:", proc.stderr)

    def test_guarded_endpoint(self):
        proc = self.run_cli("--endpoint", "guarded", "Hi")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(self.fake.requests[-1]["path"], "/ai/v2/guarded/chat/completions")
        self.assertEqual(self.run_cli("--endpoint", "elsewhere", "Hi").returncode, 2)


class CLIChatTerminalTests(CLITestCase):
    """--chat at a real terminal: Ctrl-C stops an answer and asks again; at the prompt it leaves."""

    def start(self) -> tuple:
        master, slave = _pty_pair()
        proc = subprocess.Popen(CLI + ["--chat"], stdin=slave, stdout=slave, stderr=slave, cwd=self.cwd,
                                env=clean_environment(dict(self.fake.env, TERM="dumb")), start_new_session=True)
        os.close(slave)
        self.addCleanup(os.close, master)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        return proc, master

    def read_until(self, master: int, text: bytes, timeout: float = 10.0) -> bytes:
        """What the terminal showed up to and including `text` (the rest is kept for the next call)."""
        import select

        seen, deadline = getattr(self, "_unread", b""), time.monotonic() + timeout
        while text not in seen:
            self.assertLess(time.monotonic(), deadline, seen)
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        end = seen.index(text) + len(text)
        self._unread = seen[end:]
        return seen[:end]

    def test_ctrl_c_stops_the_answer_then_ctrl_c_at_the_prompt_leaves(self):
        proc, master = self.start()
        self.read_until(master, b"> ")
        os.write(master, b"Hi [[slow:0.05]] [[long:400]]\n")
        self.read_until(master, b"resurrection")  # the answer is streaming
        proc.send_signal(signal.SIGINT)
        shown = self.read_until(master, b"[stopped]")
        self.assertNotIn(b"Traceback", shown)
        self.read_until(master, b"> ")
        self.assertIsNone(proc.poll())  # still chatting
        proc.send_signal(signal.SIGINT)
        shown = self.read_until(master, b"interrupted")
        self.assertEqual(proc.wait(timeout=10), 130)
        self.assertNotIn(b"Traceback", shown)

    def test_exit_leaves_with_0(self):
        proc, master = self.start()
        self.read_until(master, b"> ")
        os.write(master, b"[[echo]] one\n")
        self.read_until(master, b"one\r\n")
        self.read_until(master, b"> ")
        os.write(master, b"/exit\n")
        self.assertEqual(proc.wait(timeout=10), 0)


class ShippedFileTests(unittest.TestCase):
    """Each shipped file travels alone: it names its licence, and the tools say their version."""

    SHIPPED = ["gloo_stream.py", "proxy_server.py", "fake_gloo.py", "demo.py", "web/app.js", "web/markdown.js",
               "web/sse.js", "web/render.js", "web/store.js", "web/highlight.js", "web/math.js", "web/style.css",
               "web/index.html"]

    def test_the_scripts_main_block_is_the_entry_point_the_tests_start(self):
        # tests/support.CLI starts gloo_stream._run_script() rather than the script: the same only while
        # the script's `if __name__ == "__main__":` block is that one call.
        with open(CLI_SCRIPT, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        last = tree.body[-1]
        self.assertIsInstance(last, ast.If)
        self.assertEqual(ast.unparse(last.test), "__name__ == '__main__'")
        self.assertEqual([ast.unparse(statement) for statement in last.body], ["_run_script()"])

    def test_an_spdx_line_near_the_top_of_each_file(self):
        for name in self.SHIPPED:
            with self.subTest(name=name):
                with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
                    head = [next(handle, "") for _ in range(3)]
                self.assertEqual(sum("SPDX-License-Identifier: MIT" in line for line in head), 1, head)

    def test_the_licence_is_mit(self):
        with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as handle:
            text = handle.read()
        self.assertTrue(text.startswith("MIT License\n"))
        self.assertIn("the gloo-stream authors", text)

    def test_version_options(self):
        for script in ("gloo_stream.py", "fake_gloo.py"):
            with self.subTest(script=script):
                proc = subprocess.run([sys.executable, os.path.join(ROOT, script), "--version"], capture_output=True,
                                      text=True, timeout=20, stdin=subprocess.DEVNULL)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertEqual(proc.stdout, f"{script} {gloo_stream.__version__}\n")


class CLIVerdictTests(unittest.TestCase):
    """#11: for the same bytes, the CLI (--json and --raw) gives the library's verdict."""

    def setUp(self):
        from tests.proxy_support import ScriptedUpstream

        self.upstream = ScriptedUpstream().start()
        self.addCleanup(self.upstream.stop)
        env = clean_environment({"GLOO_API_KEY": "verdict-test-key", "GLOO_API_URL": self.upstream.url})
        patcher = mock.patch.dict(os.environ, env, clear=True)
        patcher.start()
        self.addCleanup(patcher.stop)
        cwd = tempfile.mkdtemp()  # no .env here
        self.addCleanup(shutil.rmtree, cwd, ignore_errors=True)
        here = os.getcwd()
        os.chdir(cwd)
        self.addCleanup(os.chdir, here)
        self.addCleanup(gloo_stream._reset_default_client)

    def run_main(self, *args: str) -> tuple:
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = gloo_stream.main(list(args))
        return code, out.getvalue(), err.getvalue()

    def library_outcome(self, body: bytes) -> dict:
        self.upstream.answer(writes=[body])
        with GlooClient(api_key="verdict-test-key", api_url=self.upstream.url, max_retries=0) as client:
            stream = client.stream("Hi")
            try:
                for _ in stream:
                    pass
            except gloo_stream.StreamError:
                pass
            return stream.outcome.to_dict()

    def test_json_and_raw_give_the_librarys_verdict(self):
        from tests.test_outcome import VECTORS

        for name, body, _, _ in VECTORS:
            with self.subTest(name):
                expected = self.library_outcome(body)
                self.upstream.answer(writes=[body])
                json_code, out, _ = self.run_main("--json", "--timeout", "5", "Hi")
                self.assertEqual(json.loads(out)["outcome"], expected)
                self.upstream.answer(writes=[body])
                raw_code, _, err = self.run_main("--raw", "--timeout", "5", "Hi")
                self.assertEqual(raw_code, json_code, err)
                if expected["kind"] != "finished":
                    self.assertEqual(json_code, 1)
                    self.assertIn(expected["message"], err)
                elif expected["finish_reason"] in ("stop", "length", None):
                    self.assertEqual(json_code, 0, err)


if __name__ == "__main__":
    unittest.main()
