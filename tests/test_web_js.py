"""The page's JavaScript modules (markdown.js, sse.js, highlight.js, store.js in web/) under `node --test`.

The tests themselves are web/tests/*.test.mjs; this module runs them in a subprocess so that
`python -m unittest` stays the one test command. Skipped when Node is missing, unless CI=true
(then it fails: .ci/run installs Node).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB_TESTS = os.path.join(REPO, "web", "tests")
TIMEOUT_SECONDS = 240  # the timing sweeps take ~15 s on a busy machine; this only bounds a hang


class NodeTests(unittest.TestCase):

    def test_web_modules_pass_node_test(self):
        node = os.environ.get("GLOO_TEST_NODE") or shutil.which("node") or shutil.which("nodejs")
        if node is None:
            reason = "node is not installed (apt-get install nodejs); the web/tests/ suite needs it"
            if os.environ.get("CI") == "true":
                self.fail(reason)
            self.skipTest(reason)
        # Files named explicitly: `node --test <dir>` changed meaning between Node versions.
        files = sorted(glob.glob(os.path.join(WEB_TESTS, "*.test.mjs")))
        self.assertTrue(files, "no web/tests/*.test.mjs files")
        try:
            result = subprocess.run([node, "--test", *files], cwd=REPO, capture_output=True, text=True,
                                    timeout=TIMEOUT_SECONDS, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            self.fail(f"node --test did not finish in {TIMEOUT_SECONDS} s:\n{(exc.stdout or '')[-3000:]}")
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, f"node --test failed:\n{_failures(output)}")
        self.assertRegex(output, r"(?m)^# fail 0$")


class ModuleGraphTests(unittest.TestCase):
    """index.html preloads every module app.js needs, so they are fetched at once, not a level at a time."""

    def test_every_imported_module_is_preloaded(self):
        web = os.path.join(REPO, "web")
        needed: set[str] = set()
        waiting = ["app.js"]
        while waiting:
            with open(os.path.join(web, waiting.pop()), encoding="utf-8") as handle:
                source = handle.read()
            for name in re.findall(r'(?m)^import\b[^;]*?from\s+"\./([\w.-]+\.js)"', source):
                if name not in needed:
                    needed.add(name)
                    waiting.append(name)
        with open(os.path.join(web, "index.html"), encoding="utf-8") as handle:
            page = handle.read()
        preloaded = set(re.findall(r'<link rel="modulepreload" href="([\w.-]+\.js)">', page))
        self.assertIn("math.js", needed)  # the walk reached render.js's own imports
        self.assertEqual(preloaded, needed)


def _failures(output: str) -> str:
    """The failing tests' lines of node's TAP output (all of it when nothing looks like a failure)."""
    lines = output.splitlines()
    picked = [line for i, line in enumerate(lines)
              if "not ok" in line or any("not ok" in prev for prev in lines[max(0, i - 12):i])]
    return "\n".join(picked[-200:]) or output[-4000:]


if __name__ == "__main__":
    unittest.main()
