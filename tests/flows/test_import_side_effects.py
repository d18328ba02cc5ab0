"""Importing ``crowdloop.flows`` (or the CLI) changes nothing in the process (issue 20, point 8).

A team imports crowdloop's flows into its own Prefect process (a worker, a ``prefect.yaml``
entrypoint, a notebook); an import that set ``PREFECT_*`` variables or attached log handlers
would change how *their* flows run. What a run needs is set by the flows when they run
(``send_logs_to_prefect``) or by the CLI command that starts them (``_prefect_process_defaults``).

The check runs in a fresh interpreter, since this test process imported crowdloop long ago.
Prefect itself is imported before the snapshot: what Prefect does on import is not crowdloop's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import importlib, json, logging, os, pkgutil, sys
# Prefect's own import effects are not crowdloop's: ``from prefect import flow`` loads prefect.main,
# which sets up Prefect's logging (its console handler on the root logger)
from prefect import flow, task

def state():
    def handlers(name):
        return sorted(type(h).__name__ for h in logging.getLogger(name).handlers)
    return {"env": dict(os.environ), "root": handlers(None), "crowdloop": handlers("crowdloop"),
            "crowdloop_level": logging.getLogger("crowdloop").level}

before = state()
import crowdloop.cli, crowdloop.flows
names = [f"{package.__name__}{suffix}" for package in (crowdloop.flows, crowdloop.cli)
         for suffix in ["", *(f".{m.name}" for m in pkgutil.walk_packages(package.__path__) if m.name != "__main__")]]
for name in names:
    importlib.import_module(name)
after = state()
print(json.dumps({"modules": names, "before": before, "after": after}))
"""


def test_importing_the_flows_and_the_cli_sets_no_environment_variable_and_no_logging() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CROWDLOOP_"))}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # every flow and CLI module was imported, not just the packages
    assert {"crowdloop.flows.loop", "crowdloop.flows.collect", "crowdloop.flows.serve", "crowdloop.flows.events",
            "crowdloop.flows.approval", "crowdloop.flows.blocks", "crowdloop.flows.logs",
            "crowdloop.cli.running"} <= set(seen["modules"])
    before, after = seen["before"], seen["after"]
    added = sorted(after["env"].keys() - before["env"].keys())
    changed = sorted(k for k in before["env"] if after["env"].get(k) != before["env"][k])
    assert (added, changed) == ([], [])
    assert after["root"] == before["root"] and after["crowdloop"] == before["crowdloop"]
    assert after["crowdloop_level"] == before["crowdloop_level"]
