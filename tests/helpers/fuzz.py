"""What the reader fuzz tests share: hypothesis settings that replay the same cases in CI, and a wall-clock limit
that no reader's ``except Exception`` can swallow."""
from __future__ import annotations

import signal
from contextlib import contextmanager

from hypothesis import HealthCheck, settings

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=800,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Hang(BaseException):  # not an Exception: no reader's "except Exception" may swallow it
    pass


@contextmanager
def time_limit(seconds: float):
    def alarm(signum, frame):
        raise Hang(f"the reader ran for more than {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


