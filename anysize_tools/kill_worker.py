"""A worker SIGKILLed under load: the scenario the hardening test asserts on and `make kill-worker` measures.

Several clients send back to back while the worker process is killed; a fresh client probes from the moment of the
kill until the service answers again. What it returns (every request's outcome, the kill and recovery times) is
judged by ``tests/test_hardening.py`` and summarised into docs/killed-worker.json by ``loadtests/kill_worker.py``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, List, Tuple

import requests

# (sent, answered, status, client): status is 200, "<code> <frontend message>", "timeout" or an exception's name
Outcome = Tuple[float, float, object, int]


@dataclass
class KillRun:
    outcomes: List[Outcome]
    killed_at: float
    recovered_at: float | None
    clients: int

    @property
    def affected(self) -> List[Outcome]:
        """The load requests that ended after the kill."""
        return [o for o in self.outcomes if o[1] > self.killed_at]

    @property
    def failed(self) -> List[Outcome]:
        return [o for o in self.affected if o[2] != 200]

    def summary(self) -> dict:
        return {"clients": self.clients, "requests_after_kill": len(self.affected), "failed": len(self.failed),
                "failures": dict(Counter(str(o[2]) for o in self.failed)),
                "answering_again_after_s": None if self.recovered_at is None
                else round(self.recovered_at - self.killed_at, 2)}


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def kill_under_load(post: Callable[..., requests.Response], worker_pid: int, clients: int = 3,
                    client_timeout: float = 10, recovery_limit: float = 60) -> KillRun:
    """Kill ``worker_pid`` while ``clients`` threads call ``post(timeout=...)`` back to back; return when every
    client has had an answer to a request sent after the service answered again (so every request in flight at the
    kill has ended: answered, refused or timed out)."""
    outcomes: List[Outcome] = []
    stop = threading.Event()

    def load(client: int):
        while not stop.is_set():
            sent = time.monotonic()
            try:
                answer = post(timeout=client_timeout)
                status = answer.status_code
                if status != 200:  # the frontend's own error body: {"code", "type", "message"}
                    status = f"{status} {answer.json().get('message')}"
                outcomes.append((sent, time.monotonic(), status, client))
            except requests.Timeout:
                outcomes.append((sent, time.monotonic(), "timeout", client))
            except requests.RequestException as error:  # counted: the caller judges it
                outcomes.append((sent, time.monotonic(), type(error).__name__, client))

    threads = [threading.Thread(target=load, args=(client,)) for client in range(clients)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: {o[3] for o in outcomes if o[2] == 200} == set(range(clients)), recovery_limit,
                 "every client answered once before the kill")
        killed_at = time.monotonic()
        os.kill(worker_pid, signal.SIGKILL)
        recovered_at = None
        while recovered_at is None and time.monotonic() < killed_at + recovery_limit:
            try:
                if post(timeout=5).status_code == 200:
                    recovered_at = time.monotonic()
            except requests.Timeout:
                pass
        if recovered_at is not None:
            wait_for(lambda: {o[3] for o in outcomes if o[0] > recovered_at and o[2] == 200} == set(range(clients)),
                     client_timeout + 30, "every client answered after the recovery")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=client_timeout + 5)
    return KillRun(list(outcomes), killed_at, recovered_at, clients)
