"""The suite in a few processes at once: it is cut into shares of about equal weight (WEIGHTS), the
main process runs the first and each worker another, and the workers' results are told to the main
run as if they had run there (the same dots, counts, failures and exit status).

Much of the suite waits (on sockets, subprocesses, a browser), so three processes on a 2-CPU machine
finish it in well under half the time of one. A test class stays whole in one process, so its
fixtures (a simulator, a relay, nginx) are set up once; a module's own fixtures (the page tests'
browser) are set up by each process that runs some of its classes.
GLOO_TEST_JOBS=N runs N processes, 1 everything in one. A worker that cannot start, or dies, is
reported as an error of the run, never as a silent pass.

    python -m tests.parallel --worker < ids.json     (the worker side: the test ids as a JSON list)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
import unittest
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_TIMEOUT = 1500  # seconds: far beyond the suite; only a hang reaches it
# What a module's tests cost, by which the run is cut into shares: seconds of wall time in one process
# plus half their CPU seconds, since three processes on two CPUs slow the busy parts and not the
# waiting ones (idle 2-CPU machine, 2026-12-08). A module not listed weighs 0.05 s a test.
WEIGHTS = {
    "tests.test_page": 51.5, "tests.test_proxy": 25.6, "tests.test_cli": 23.2, "tests.test_abuse": 19.8,
    "tests.test_web_js": 13.8, "tests.test_faults": 9.7, "tests.test_nginx": 8.4, "tests.test_transport": 7.1,
    "tests.test_cli_history": 6.0, "tests.test_client": 3.8, "tests.test_secrets": 3.6, "tests.test_fake_gloo": 3.2,
    "tests.test_cli_responses": 3.1, "tests.test_config": 1.7, "tests.test_responses": 1.5, "tests.test_catalog": 1.4,
    "tests.test_gloo_api": 1.4, "tests.test_sse": 1.4, "tests.test_outcome": 1.0,
}
MAIN_HANDICAP = 4.0  # seconds of the main process's own: loading every module, replaying the workers' events
DEFAULT_JOBS = 3  # the suite mostly waits (sockets, subprocesses, a browser): 3 processes suit 2 CPUs


def jobs() -> int:
    try:
        return max(1, int(os.environ.get("GLOO_TEST_JOBS", str(DEFAULT_JOBS))))
    except ValueError:
        return DEFAULT_JOBS


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


def _unit_of(test: Any) -> str:
    """The part of the run that stays in one process: the test's class."""
    return f"{type(test).__module__}.{type(test).__qualname__}"


def split(tests: list[Any], count: int) -> list[list[Any]]:
    """`tests` cut into `count` shares of about equal weight (the heaviest units first, each to the
    lightest share so far); every unit stays whole, and each share keeps the run's own order (its
    selection, `-k` included). The first share is the main process's."""
    units: dict[str, list[Any]] = {}
    for test in tests:
        units.setdefault(_unit_of(test), []).append(test)
    sizes: dict[str, int] = {}
    for test in tests:
        module = type(test).__module__
        sizes[module] = sizes.get(module, 0) + 1

    def weight(unit: str) -> float:
        module = type(units[unit][0]).__module__
        per_test = WEIGHTS[module] / sizes[module] if module in WEIGHTS else 0.05
        return per_test * len(units[unit])

    shares: list[list[str]] = [[] for _ in range(max(1, count))]
    loads = [MAIN_HANDICAP] + [0.0] * (len(shares) - 1)  # the main process also loads and reports the run
    for unit in sorted(units, key=weight, reverse=True):
        lightest = loads.index(min(loads))
        shares[lightest].append(unit)
        loads[lightest] += weight(unit)
    place = {unit: index for index, share in enumerate(shares) for unit in share}
    cut: list[list[Any]] = [[] for _ in shares]
    for test in tests:
        cut[place[_unit_of(test)]].append(test)
    return cut


class Worker:
    """The worker process and the events it reports, read in a thread as they come."""

    def __init__(self, test_ids: list[str]) -> None:
        self.events: list[dict] = []
        self.problem = ""
        self.started = time.monotonic()
        self.finished: float | None = None  # when it reported its last test
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
                    continue
                if self.events[-1].get("kind") == "done":
                    self.finished = time.monotonic()

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
