"""crowdloop's logs in the Prefect UI: the ``crowdloop`` logger tree goes to the run's logs.

Vendors, stores and the engine log through ``logging.getLogger(__name__)`` (all under
``crowdloop.``) and know nothing of Prefect. Inside a flow or task run those records also go to
the Prefect API, so a skipped MTurk answer or a throttled call shows in the run's logs in the
UI next to the step that caused it; outside a run (``run_in_process``, the annotation app)
they go wherever the process's logging sends them, as before.

Why a handler on ``crowdloop`` instead of ``PREFECT_LOGGING_EXTRA_LOGGERS``: that setting is
read when Prefect configures logging in each process, so every worker, served run and Dask
worker would need it in its environment; the handler is attached by the flow and its tasks
themselves, wherever they run.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

LOGGER = "crowdloop"
log = logging.getLogger("crowdloop.flows")


class _InARun(logging.Filter):
    """Pass only records made inside a flow or task run (the API files logs under a run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "flow_run_id", None):
            return True
        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class _RunLogHandler(APILogHandler):
    """Prefect's API log handler, for records made inside a run, at INFO and above."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.addFilter(_InARun())


def send_logs_to_prefect() -> None:
    """Attach the run-log handler to the ``crowdloop`` logger (once per process) at INFO.

    Called by the flows and their tasks, so it holds in worker subprocesses and on Dask workers.
    """
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _RunLogHandler) for h in logger.handlers):
        logger.addHandler(_RunLogHandler())
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


def _money(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "?"


def step_summary(step: str, r: int, out: dict[str, Any]) -> str:
    """One line saying what a step did in round ``r``, from the record it returned."""
    head = f"{step} · r{r}: "
    if step == "reference":
        acc = out.get("accuracy")
        return head + (f"whole pool with true labels: accuracy {acc:.4f}" if acc is not None else "no ground truth")
    if step == "train":
        if not out.get("trained"):
            return head + f"not trained yet ({out.get('n_labeled', 0)} labeled items)"
        return head + f"trained on {out.get('n_labeled', 0)} labeled items in {out.get('seconds', 0):.2f} s"
    if step == "evaluate":
        acc = out.get("accuracy")
        return head + (f"test accuracy {acc:.4f}" if acc is not None else "no model yet") + (
            f"; {out.get('n_labeled', 0)} labels, {out.get('n_judgments', 0)} judgments, {_money(out.get('cost'))} spent")
    if step == "stop":
        return head + (f"stop: {out['stop_reason']}" if out.get("stop_reason") else "go on")
    if step == "select":
        extra = "".join(f", {len(out[k])} {k}" for k in ("reask", "gold") if out.get(k))
        return head + f"{len(out.get('item_ids', []))} items by {out.get('strategy')}{extra} in {out.get('seconds', 0):.2f} s"
    if step == "autolabel":
        return head + f"{out.get('n_machine', 0)} machine labels (threshold {out.get('threshold', 'none')})"
    if step == "dispatch":
        fitted = (f"; {out['n_fitted_to_workforce']} task(s) with fewer judgments than planned: too few workers who "
                  "have not answered the item or been blocked" if out.get("n_fitted_to_workforce") else "")
        return head + f"batch {out.get('batch_id')} sent ({len(out.get('refs', []))} vendor references){fitted}"
    if step == "collect":
        if out.get("pending"):
            return head + f"waiting: {out.get('n_annotations', 0)} of {out.get('expected', 0)} judgments in"
        short = f", {out['n_incomplete']} items short" if out.get("n_incomplete") else ""
        if out.get("expected") and not out.get("n_annotations"):  # said plainly: a run can go on for days like this
            short += ("; nobody answered before collect.timeout_s (their items go back to the pool once): is anyone "
                      "working on this vendor? (local: crowdloop annotators add NAME, then crowdloop annotate)")
        return head + f"{out.get('n_annotations', 0)} of {out.get('expected', 0)} judgments collected{short}"
    if step == "aggregate":
        return head + f"{out.get('n_items', 0)} labels by {out.get('method')}"
    if step == "pay":
        return head + (f"{out.get('n_approved', 0)} approved, {out.get('n_rejected', 0)} rejected; "
                       f"rewards {_money(out.get('rewards'))} + bonuses {_money(out.get('bonuses'))} + fees "
                       f"{_money(out.get('fees'))} = {_money(out.get('total'))}")
    return head + ", ".join(f"{k}={v}" for k, v in out.items() if isinstance(v, (int, float, str)))[:300]
