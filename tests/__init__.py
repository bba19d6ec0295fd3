"""The test suite. `python -m unittest` finds it; this file adds two things to that run: it is
cut into shares of about equal weight, run by this process and by worker processes at the same time
(tests/parallel.py; GLOO_TEST_JOBS=N for N processes, 1 for one), and at the end it reports the
tests that were skipped and why, grouped by reason, even without `-v` (a missing browser or nginx
skips a whole module or class, which unittest reports as one `s`).
"""

from __future__ import annotations

import os
import re
import sys
import time
import unittest
from collections.abc import Iterator
from typing import TextIO

# How unittest names a skip raised by setUpModule/setUpClass: "setUpClass (tests.test_nginx.NginxTests)".
_GROUP = re.compile(r"^(setUpModule|setUpClass) \((.+)\)$")


def _flatten(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from _flatten(test)
        elif test is not None:  # a suite that already ran holds None in its tests' places
            yield test


def skip_report(skipped: list[tuple], ids: list[str]) -> str:
    """The skipped tests (`ids`: every test of the run), one line per reason: how many it stopped, and where."""
    by_reason: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for test, reason in skipped:
        name = test.id()
        match = _GROUP.match(name)
        group = match.group(2) if match else name
        by_reason.setdefault(reason, []).append(group)
        # A group skip stops every test in that module or class; a test skip stops itself.
        counts[reason] = counts.get(reason, 0) + (sum(1 for i in ids if i.startswith(group + ".")) if match else 1)
    if not by_reason:
        return ""
    groups = sum(len(where) for where in by_reason.values())
    total = sum(counts.values())
    lines = [f"Skipped: {groups} group{'s' * (groups != 1)}, {total} test{'s' * (total != 1)} did not run"]
    for reason, where in by_reason.items():
        lines.append(f"  {counts[reason]} test{'s' * (counts[reason] != 1)} in {', '.join(where)}: {reason}")
    return "\n".join(lines)


class _ReportingSuite(unittest.TestSuite):
    """Runs the suite (shares of it in worker processes: tests/parallel.py), then writes the skip
    report to stderr."""

    stream: TextIO = sys.stderr

    def run(self, result: unittest.TestResult, debug: bool = False) -> unittest.TestResult:
        from tests import parallel

        tests = list(_flatten(self))
        ids = [test.id() for test in tests]  # now: the suite lets go of its tests as they run
        workers: list[parallel.Worker] = []
        count = parallel.jobs()
        if count > 1 and not debug:
            here, *there = parallel.split(tests, count)
            workers = [parallel.Worker([test.id() for test in share]) for share in there if share]
            self._tests = here  # the workers run while this process runs its own share
        started = time.monotonic()
        result = super().run(result, debug)
        took = [time.monotonic() - started]
        for worker in workers:
            worker.wait()
            worker.replay(result)
            took.append((worker.finished or time.monotonic()) - worker.started)
        if workers:
            print(f"\n{len(took)} processes: " + ", ".join(f"{seconds:.0f} s" for seconds in took),
                  file=self.stream, flush=True)
        report = skip_report(result.skipped, ids)
        if report:
            print("\n" + report, file=self.stream, flush=True)
        return result


def load_tests(loader: unittest.TestLoader, standard_tests: unittest.TestSuite, pattern: str) -> unittest.TestSuite:
    """unittest's hook for a package: discover the modules here as usual, in a reporting suite."""
    suite = _ReportingSuite(standard_tests)
    suite.addTests(loader.discover(start_dir=os.path.dirname(os.path.abspath(__file__)), pattern=pattern or "test*.py"))
    return suite
