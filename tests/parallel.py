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
# What a test class costs, by which the run is cut into shares: its seconds in one process (class
# fixtures included), plus half its CPU seconds, since three processes on two CPUs slow the busy
# parts (the browser, the CLI's processes, node) and not the waiting ones. Measured on an idle 2-CPU
# machine, 2026-12-08, for the classes of a second or more, named without "tests."; any other class
# weighs 0.05 s a test (their average).
WEIGHTS = {
    "test_abuse.CrowdTests": 15.9, "test_page.ConversationTest": 12.7, "test_page.ExchangeTest": 11.6,
    "test_web_js.NodeTests": 11.4, "test_nginx.NginxDeploymentTests": 8.0, "test_page.StreamingTest": 6.5,
    "test_cli.CLIPipeTests": 6.1, "test_cli_history.HistoryTests": 5.4, "test_page.FailureTest": 5.4,
    "test_page.PageShapeTest": 4.9, "test_page.ApiKeyTest": 3.8, "test_cli.CLIOutputTests": 3.6,
    "test_cli.CLIScriptTests": 3.5, "test_faults.RelayFaultTests": 3.4, "test_proxy.LimitTests": 3.3,
    "test_cli.CLITerminalSafetyTests": 3.1, "test_proxy.RelayTests": 3.0, "test_cli.SecretTests": 2.6,
    "test_page.SimulatorBadgeTest": 2.5, "test_transport.TLSTests": 2.4, "test_faults.ClientFaultTests": 2.2,
    "test_cli_responses.CLIResponsesTests": 2.2, "test_page.RendererTest": 2.2, "test_transport.PoolTests": 2.0,
    "test_proxy.ProcessTests": 1.9, "test_page.TwoTabsTest": 1.9, "test_page.ResponsesPageTest": 1.8,
    "test_cli.CLIExitCodeTests": 1.8, "test_secrets.CommandLineSecretTests": 1.7,
    "test_proxy.UpstreamFailureTests": 1.7, "test_proxy.FieldPolicyTests": 1.7, "test_page.BidiTest": 1.7,
    "test_faults.TokenFaultTests": 1.6, "test_transport.InterimAndTimeoutTests": 1.4, "test_abuse.FramingTests": 1.4,
    "test_client.MidStreamFailureTests": 1.4, "test_proxy.TimingTests": 1.3, "test_proxy.OneVerdictTests": 1.3,
    "test_proxy.StreamingPhaseTests": 1.3, "test_proxy.StartupTests": 1.2, "test_proxy.DrainTests": 1.1,
}
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

    def weight(unit: str) -> float:
        return WEIGHTS.get(unit[len("tests."):] if unit.startswith("tests.") else unit, 0.05 * len(units[unit]))

    shares: list[list[str]] = [[] for _ in range(max(1, count))]
    loads = [0.0] * len(shares)
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
