"""tests/__init__.py's end-of-run report of skipped tests, grouped by reason."""

from __future__ import annotations

import unittest

from tests import skip_report


def sample_classes() -> tuple:
    """Two test classes made here, so discovery does not run them as part of the suite."""

    class _NoBrowser(unittest.TestCase):
        @classmethod
        def setUpClass(cls) -> None:
            raise unittest.SkipTest("no Chromium")

        def test_a(self) -> None:
            pass

        def test_b(self) -> None:
            pass


    class _Mixed(unittest.TestCase):
        def test_runs(self) -> None:
            pass

        def test_skips(self) -> None:
            self.skipTest("needs more files")

    return _NoBrowser, _Mixed


def run_suite(*classes: type) -> str:
    suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromTestCase(cls) for cls in classes)
    ids = [f"{cls.__module__}.{cls.__qualname__}.{name}"
           for cls in classes for name in unittest.defaultTestLoader.getTestCaseNames(cls)]
    result = unittest.TestResult()
    suite.run(result)
    return skip_report(result.skipped, ids)


class SkipReportTests(unittest.TestCase):
    def test_a_skipped_class_counts_its_tests_and_gives_its_reason(self):
        no_browser, mixed = sample_classes()
        self.assertEqual(run_suite(no_browser, mixed), "\n".join([
            "Skipped: 2 groups, 3 tests did not run",
            f"  2 tests in {__name__}.sample_classes.<locals>._NoBrowser: no Chromium",
            f"  1 test in {__name__}.sample_classes.<locals>._Mixed.test_skips: needs more files",
        ]))

    def test_one_skipped_test(self):
        self.assertEqual(run_suite(sample_classes()[1]), "\n".join([
            "Skipped: 1 group, 1 test did not run",
            f"  1 test in {__name__}.sample_classes.<locals>._Mixed.test_skips: needs more files",
        ]))

    def test_nothing_skipped_means_no_report(self):
        self.assertEqual(skip_report([], ["tests.test_x.Y.test_z"]), "")


if __name__ == "__main__":
    unittest.main()
