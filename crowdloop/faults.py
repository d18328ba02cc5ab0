"""Fault injection for crash tests: ``CROWDLOOP_FAULT_AT=point@round[,point@round]``.

At a named point the process kills itself with SIGKILL, exactly as an OOM kill or a
machine loss would, so tests can check that a rerun resumes without double dispatch or
lost answers. Unset in normal use; checking costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "CROWDLOOP_FAULT_AT"


def fault_point(name: str, round_: int) -> None:
    spec = os.environ.get(ENV)
    if spec and f"{name}@{round_}" in {s.strip() for s in spec.split(",")}:
        os.kill(os.getpid(), signal.SIGKILL)
