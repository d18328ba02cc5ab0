"""The ``crowdloop`` command line (typer + rich). Reference: docs/cli.md.

Exit codes: 0 ok; 2 bad input (a ``CrowdloopError``: one line, ``error: ...``); 3 an outside
failure worth a retry (network down, throttled, 5xx, timeout: ``crowdloop.errors.is_transient``);
130 interrupted (Ctrl-C, SIGTERM); 1 a bug (the traceback is printed). Every command that
touches a project takes it as ``--project-dir/-p DIR``; commands that always took a positional
DIR still do.

One module per kind of command: ``running`` (run, check, serve, deploy), ``inspection``
(status, workers, verify, export), ``annotation`` (annotate, annotators, webhook), ``review``
(review, reviewers), ``tools`` (mturk, pool, disputed, correct, settle); ``common`` holds the app and the conventions they share.
"""

import importlib

from crowdloop.cli.common import app

for _module in ("running", "inspection", "annotation", "review", "tools"):  # each registers its commands; this order is --help's
    importlib.import_module(f"crowdloop.cli.{_module}")

__all__ = ["app"]
