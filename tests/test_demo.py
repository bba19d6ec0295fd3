"""demo.py runs offline on the simulator: the tutorial's two examples and a grounded answer."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import unittest

import demo
from tests.support import IsolatedTestCase, clean_environment


class DemoTests(IsolatedTestCase):
    def test_offline_run_has_a_grounded_answer_with_sources(self):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = demo.main(["--offline", "--delay", "0", "--sources", "2"])
        text = out.getvalue()
        self.assertEqual(code, 0, err.getvalue())
        for heading in ("Example 1", "Example 2", "Example 3: a grounded answer from GlooGrounded"):
            self.assertIn(heading, text)
        grounded = text.split("Example 3", 1)[1]
        self.assertIn("\nSources:\n  [1] ", grounded)
        self.assertIn("  [2] ", grounded)
        self.assertNotIn("  [3] ", grounded)
        self.assertIn("https://", grounded)
        self.assertRegex(grounded, r"\[\d+ tokens, finish_reason=stop, answered by gloo-")

    def test_a_reader_that_stops_early_ends_the_demo_quietly(self):
        # `python demo.py | head -2`: the pipe closes while the demo still writes.
        demo_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo.py")
        for lines in (1, 0):  # after its first line, or before it (the simulator's note) is even written
            with self.subTest(lines=lines):
                proc = subprocess.Popen([sys.executable, demo_py, "--offline", "--delay", "0"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_environment(),
                                        cwd=tempfile.gettempdir())
                assert proc.stdout is not None and proc.stderr is not None
                for _ in range(lines):
                    proc.stdout.readline()
                proc.stdout.close()  # the reader goes away
                err = proc.stderr.read().decode()
                proc.stderr.close()
                self.assertEqual(proc.wait(30), 0, err)
                self.assertNotIn("Traceback", err)
                self.assertNotIn("BrokenPipeError", err)


if __name__ == "__main__":
    unittest.main()
