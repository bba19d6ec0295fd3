"""tests/parallel.py: the run cut into shares, and a worker's results told to the main run."""

from __future__ import annotations

import os
import unittest
from unittest import mock

from tests import _flatten, parallel


def _case(module: str, name: str, *methods: str) -> type:
    """A test class that claims to live in `module` (made here, so discovery never runs it)."""
    body = {method: lambda self: None for method in methods}
    return type(name, (unittest.TestCase,), {"__module__": module, **body})


def _tests(*classes: type) -> list:
    return [test for cls in classes for test in unittest.defaultTestLoader.loadTestsFromTestCase(cls)]


class SplitTests(unittest.TestCase):
    def test_shares_are_balanced_and_keep_each_class_whole_and_the_runs_order(self):
        weights = {"heavy.B": 6.0, "middle.C": 5.0, "heavy.D": 2.0}  # A is not listed: 0.05 s a test
        classes = [_case("tests.light", "A", "test_1", "test_2"),
                   _case("tests.heavy", "B", "test_1", "test_2", "test_3"),
                   _case("tests.middle", "C", "test_1"), _case("tests.heavy", "D", "test_1")]
        tests = _tests(*classes)
        with mock.patch.object(parallel, "WEIGHTS", weights):
            shares = parallel.split(tests, 2)
        self.assertEqual(sorted(test.id() for share in shares for test in share), sorted(t.id() for t in tests))
        self.assertEqual([{type(test).__name__ for test in share} for share in shares], [{"B", "A"}, {"C", "D"}])
        for share in shares:  # the run's own order within each share
            self.assertEqual(share, [test for test in tests if test in share])

    def test_every_weight_names_a_class_of_the_suite(self):
        suite = unittest.defaultTestLoader.discover(os.path.dirname(os.path.abspath(__file__)),
                                                    top_level_dir=os.path.dirname(os.path.dirname(
                                                        os.path.abspath(__file__))))
        units = {parallel._unit_of(test)[len("tests."):] for test in _flatten(suite)}
        self.assertEqual(sorted(set(parallel.WEIGHTS) - units), [], "weights of classes that are gone")

    def test_one_job_is_one_share(self):
        tests = _tests(_case("tests.x", "G", "test_1", "test_2"))
        self.assertEqual(parallel.split(tests, 1), [tests])

    def test_jobs_reads_gloo_test_jobs(self):
        for value, expected in (("1", 1), ("4", 4), ("0", 1), ("many", parallel.DEFAULT_JOBS)):
            with self.subTest(value), mock.patch.dict("os.environ", {"GLOO_TEST_JOBS": value}):
                self.assertEqual(parallel.jobs(), expected)


class ReplayTests(unittest.TestCase):
    def replay(self, events: list[dict], problem: str = "") -> unittest.TestResult:
        worker = parallel.Worker.__new__(parallel.Worker)  # its events, without a process
        worker.events, worker.problem = events, problem
        result = unittest.TestResult()
        worker.replay(result)
        return result

    def test_the_workers_events_become_the_runs_results(self):
        events = [{"kind": "start", "id": "tests.m.C.test_a"}, {"kind": "success", "id": "tests.m.C.test_a"},
                  {"kind": "stop", "id": "tests.m.C.test_a"},
                  {"kind": "start", "id": "tests.m.C.test_b"},
                  {"kind": "failure", "id": "tests.m.C.test_b", "traceback": "AssertionError: 1 != 2"},
                  {"kind": "stop", "id": "tests.m.C.test_b"},
                  {"kind": "skip", "id": "tests.m.C.test_c", "reason": "no Chromium"}, {"kind": "done"}]
        result = self.replay(events)
        self.assertEqual(result.testsRun, 2)
        self.assertEqual([(test.id(), text) for test, text in result.failures],
                         [("tests.m.C.test_b", "tests.parallel.RemoteFailure: AssertionError: 1 != 2\n")])
        self.assertEqual([(test.id(), reason) for test, reason in result.skipped],
                         [("tests.m.C.test_c", "no Chromium")])
        self.assertFalse(result.wasSuccessful())

    def test_a_worker_that_died_is_an_error_never_a_pass(self):
        result = self.replay([{"kind": "start", "id": "tests.m.C.test_a"}],
                             problem="the test worker ended (exit status -9) before it reported all its tests")
        self.assertEqual([test.id() for test, _ in result.errors], ["tests.parallel.worker"])
        self.assertIn("exit status -9", result.errors[0][1])
        self.assertFalse(result.wasSuccessful())


if __name__ == "__main__":
    unittest.main()
