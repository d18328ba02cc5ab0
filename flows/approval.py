"""The approval form: a run on a real-money vendor pauses for a person before it dispatches.

``pause_flow_run(wait_for_input=BudgetApproval...)`` shows the forecast (Markdown) and a form
with the money budget in the Prefect UI ("Resume" on the flow run); the person approves it,
edits it, or declines. The answer is recorded in the store (``crowdloop.engine.approval``) and
the approved budget becomes the project's ``stopping.money_budget``. The simulated crowd, the
local app and MTurk's sandbox never pause.
"""

from __future__ import annotations

import logging

from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.engine.approval import approval_needed, forecast_markdown, latest_approval, record_approval, spends_real_money

log = logging.getLogger("crowdloop.flows.approval")

# A paused run keeps its process (and the project lock); after a day unanswered it fails and
# the next run asks again.
PAUSE_TIMEOUT_S = 24 * 3600
DECLINED = "spending not approved"


class BudgetApproval(RunInput):
    """What the person answers: go ahead or not, and the money budget to hold the run to."""

    approve: bool = Field(True, description="dispatch to the vendor (uncheck to stop the run here)")
    money_budget: float = Field(gt=0, description="the run stops before spending more than this in total")


def with_budget(p: Project, money_budget: float) -> Project:
    """The project with ``stopping.money_budget`` set (recorded as a resumable config change)."""
    data = p.config.model_dump(mode="json")
    data["stopping"]["money_budget"] = money_budget
    return Project.prepare(parse_config(data, source="the approval form"), p.store.url)


def approve_spending(url: str, r: int) -> str | None:
    """Before round ``r``'s stop check: pause for approval if it is needed; why the run stops (None: go on)."""
    p = Project.shared(url)
    approved = latest_approval(p)
    if approved is not None and p.config.stopping.money_budget is None and spends_real_money(p):
        p = with_budget(p, float(approved["money_budget"]))  # a config without a budget runs within the approved one
    forecast = approval_needed(p, r)
    if forecast is None:
        return None
    suggested = p.config.stopping.money_budget or max(forecast["worst_case"], 0.01)  # covers every planned item
    log.warning(f"round {r}: vendor {forecast['vendor']!r} spends real money; forecast {forecast['total']:.2f} "
                f"{forecast['currency']}; waiting for approval (Resume on this flow run in the Prefect UI)")
    form = BudgetApproval.with_initial_data(description=forecast_markdown(forecast), approve=True, money_budget=suggested)
    answer = pause_flow_run(wait_for_input=form, timeout=PAUSE_TIMEOUT_S, poll_interval=2)
    if not answer.approve:
        log.warning(f"round {r}: spending declined in the Prefect UI; nothing dispatched")
        return DECLINED
    from prefect.runtime import flow_run

    record_approval(p, answer.money_budget, by=f"Prefect UI (flow run {flow_run.id})", forecast=forecast)
    with_budget(p, answer.money_budget)
    log.info(f"round {r}: approved money budget {answer.money_budget:g} {forecast['currency']}")
    return None
