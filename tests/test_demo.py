"""demo.py runs offline on the simulator: the tutorial's two examples and a grounded answer."""

from __future__ import annotations

import contextlib
import io
import unittest

import demo
from tests.support import IsolatedTestCase


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


if __name__ == "__main__":
    unittest.main()
