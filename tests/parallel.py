"""Two test processes on a 2-CPU machine: half the modules run in a worker, and their results are
told to the main run as if they had run there (the same dots, counts, failures and exit status).

Much of the suite waits (on sockets, subprocesses, a browser), so two processes finish it in a
little over half the time. The split is by module, so module and class fixtures (the browser, the
simulator, nginx) stay whole in one process; GLOO_TEST_JOBS=1 runs everything in one process.
A worker that cannot start, or dies, is reported as an error of the run, never as a silent pass.

    python -m tests.parallel --worker < ids.json     (the worker side: the test ids as a JSON list)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import traceback
import unittest
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_TIMEOUT = 1500  # seconds: far beyond the suite; only a hang reaches it
# Modules that go to the worker: about half of the suite's time, none of them sharing the browser
# (test_page) or the crowd of 2,000 connections (test_abuse), which the main process runs.
WORKER_MODULES = frozenset({
    "tests.test_proxy", "tests.test_cli", "tests.test_cli_responses", "tests.test_cli_history", "tests.test_faults",
    "tests.test_web_js", "tests.test_transport", "tests.test_nginx", "tests.test_secrets", "tests.test_client",
    "tests.test_fake_gloo",
})


def jobs() -> int:
    try:
        return max(1, int(os.environ.get("GLOO_TEST_JOBS", "2")))
    except ValueError:
        return 2


class RemoteFailure(Exception):
    """A failure or error that happened in the worker: its traceback, as the worker formatted it."""


class _RemoteTest:
    """A test that ran in the worker, as the main run's result sees it."""

    failureException = AssertionError

    def __init__(self, test_id: str, description: str | None) -> None:
        self._id = test_id
        self._description = description

    def id(self) -> str:
        return self._id

    def shortDescription(self) -> str | None:
        return self._description

    def __str__(self) -> str:
        module, _, name = self._id.rpartition(".")
        return f"{name} ({module})" if module else self._id


def _module_of(test: Any) -> str:
    return type(test).__module__


def split(tests: list[Any]) -> tuple[list[Any], list[str]]:
    """(the tests the main process runs, the ids of those the worker runs, in the run's order: the
    run's own selection, `-k` included, is kept)."""
    here = [test for test in tests if _module_of(test) not in WORKER_MODULES]
    there = [test.id() for test in tests if _module_of(test) in WORKER_MODULES]
    return here, there


class Worker:
    """The worker process and the events it reports, read in a thread as they come."""

    def __init__(self, test_ids: list[str]) -> None:
        self.events: list[dict] = []
        self.problem = ""
        read, write = os.pipe()
        env = dict(os.environ, GLOO_TEST_JOBS="1", GLOO_TEST_EVENTS_FD=str(write))
        try:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "tests.parallel", "--worker"], cwd=ROOT, env=env,
                stdin=subprocess.PIPE, pass_fds=(write,))
        except OSError as exc:
            self.proc = None
            self.problem = f"the test worker did not start: {exc}"
        os.close(write)
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write(json.dumps(test_ids).encode())  # the tests to run, by id
                self.proc.stdin.close()
            except OSError as exc:
                self.problem = f"the test worker did not take its tests: {exc}"
        self._reader = threading.Thread(target=self._read, args=(read,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as events:
            for line in events:
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    pass

    def wait(self) -> None:
        if self.proc is None:
            return
        try:
            code = self.proc.wait(WORKER_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.problem = f"the test worker did not finish in {WORKER_TIMEOUT} s"
            code = None
        self._reader.join(10)
        if not self.problem and not any(event.get("kind") == "done" for event in self.events):
            self.problem = f"the test worker ended (exit status {code}) before it reported all its tests"

    def replay(self, result: unittest.TestResult) -> None:
        """Tell `result` what happened in the worker, test by test, as unittest would have."""
        for event in self.events:
            kind = event.get("kind")
            if kind == "done":
                continue
            test = _RemoteTest(event.get("id", "?"), event.get("description"))
            err = (RemoteFailure, RemoteFailure(event.get("traceback", "")), None)
            if kind == "start":
                result.startTest(test)  # type: ignore[arg-type]
            elif kind == "stop":
                result.stopTest(test)  # type: ignore[arg-type]
            elif kind == "success":
                result.addSuccess(test)  # type: ignore[arg-type]
            elif kind == "failure":
                result.addFailure(test, err)  # type: ignore[arg-type]
            elif kind == "error":
                result.addError(test, err)  # type: ignore[arg-type]
            elif kind == "skip":
                result.addSkip(test, event.get("reason", ""))  # type: ignore[arg-type]
            elif kind == "expected_failure":
                result.addExpectedFailure(test, err)  # type: ignore[arg-type]
            elif kind == "unexpected_success":
                result.addUnexpectedSuccess(test)  # type: ignore[arg-type]
        if self.problem:
            holder = _RemoteTest("tests.parallel.worker", None)
            result.addError(holder, (RemoteFailure, RemoteFailure(self.problem), None))  # type: ignore[arg-type]


# -- the worker side ----------------------------------------------------------


class _EventResult(unittest.TestResult):
    """A result that writes each event as a JSON line (the main process replays them)."""

    def __init__(self, out: Any) -> None:
        super().__init__()
        self.out = out

    def _emit(self, kind: str, test: Any, **fields: Any) -> None:
        description = test.shortDescription() if hasattr(test, "shortDescription") else None
        self.out.write(json.dumps({"kind": kind, "id": test.id(), "description": description, **fields}) + "\n")
        self.out.flush()

    def _traceback(self, err: Any, test: Any) -> str:
        return self._exc_info_to_string(err, test)

    def startTest(self, test: Any) -> None:
        super().startTest(test)
        self._emit("start", test)

    def stopTest(self, test: Any) -> None:
        super().stopTest(test)
        self._emit("stop", test)

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._emit("success", test)

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._emit("failure", test, traceback=self._traceback(err, test))

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._emit("error", test, traceback=self._traceback(err, test))

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._emit("skip", test, reason=reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._emit("expected_failure", test, traceback=self._traceback(err, test))

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._emit("unexpected_success", test)

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._emit("failure" if failed else "error", subtest, traceback=self._traceback(err, test))


def _worker() -> int:
    fd = int(os.environ["GLOO_TEST_EVENTS_FD"])
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        result = _EventResult(out)
        try:
            test_ids = json.load(sys.stdin)
            suite = unittest.TestSuite()
            for test_id in test_ids:  # one by one, in order: each class's fixtures run once, as usual
                suite.addTests(unittest.defaultTestLoader.loadTestsFromName(test_id))
            suite.run(result)
        except BaseException:  # reported, so the main run fails instead of passing silently
            out.write(json.dumps({"kind": "error", "id": "tests.parallel.worker", "description": None,
                                  "traceback": traceback.format_exc()}) + "\n")
        out.write(json.dumps({"kind": "done"}) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(_worker())
    print(__doc__)
