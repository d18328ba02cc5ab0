"""README's "Your own CSV, no labels", end to end, as a user runs it (issue 15, point 6).

An unlabeled CSV (no label column anywhere the loop can read), the shipped
``configs/own-csv.yaml`` pointed at it, and the four commands of the walkthrough in
subprocesses against the session's Prefect server: ``crowdloop run``, ``crowdloop annotators
add``, ``crowdloop annotate`` and, at the end, ``crowdloop export``. The annotator is real
Chromium driven by Playwright, clicking the class button the answer key says; the key lives in
this test only. The loop must stop by itself on stabilizing predictions; then every exported
human label must be the key's, and the stopped model's true accuracy on the pool items it never
saw (its exported machine labels against the key) must lie in the interval the audit reported.

The data: two linearly separable classes with 10 % of labels flipped at random
(``make_classification(flip_y=0.1)``), so the model is about 95 % right and its errors are spread
over the pool rather than all on the items margin sampling buys. The interval is a 95 % one, so
the last check can fail for an unlucky seed; the run is deterministic, and the config's own seed
(0) is a typical one, not a picked one: this test's run stops after 10 rounds (200 answers, 100 of
them the audit) with the estimate 0.930 in [0.863, 0.966] and the true accuracy 0.951. The same
project in process with a crowd answering from the same key, seeds 0-19: the interval held the
truth in 18 of 20 (median distance to the nearer end 0.024; seed 0: 0.015).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import CONFIGS, crowdloop_cmd
from tests.vendors.app_server import start_annotate, stop_process

pytestmark = pytest.mark.slow
CLASSES = ("no", "yes")
RUN_TIMEOUT_S = 300


def write_unlabeled_csv(root: Path) -> dict[str, str]:
    """``root/pool.csv`` with an id and eight feature columns, no labels; returns the answer key."""
    import numpy as np
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=2000, n_features=8, n_informative=3, n_redundant=0, n_clusters_per_class=1,
                               class_sep=2.0, flip_y=0.1, random_state=0)
    ids = [f"row-{i:04d}" for i in range(len(X))]
    frame = pd.DataFrame(X.round(4), columns=[f"f{k}" for k in range(X.shape[1])])
    frame.insert(0, "id", ids)
    frame.to_csv(root / "pool.csv", index=False)
    return dict(zip(ids, np.array(CLASSES)[y].tolist(), strict=True))


def cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(crowdloop_cmd() + args, env=env, capture_output=True, text=True, timeout=timeout)


def add_annotator(project_dir: Path, url: str, env: dict[str, str], run: subprocess.Popen, log: Path) -> str:
    """``crowdloop annotators add me``, retried until ``crowdloop run`` has created the project; the link."""
    deadline = time.monotonic() + 90
    while True:
        result = cli(["annotators", "add", "me", "-p", str(project_dir), "--url", url], env)
        if result.returncode == 0:
            return result.stdout.strip()
        if run.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"annotators add: {result.stderr.strip()}\nrun: {log.read_text()[-3000:]}")
        time.sleep(0.5)


def test_own_csv_no_labels_walkthrough(browser, cli_env: dict[str, str], tmp_path: Path) -> None:
    key = write_unlabeled_csv(tmp_path)
    config = yaml.safe_load((CONFIGS / "own-csv.yaml").read_text())
    config["pool"] = {"source": "csv", "path": "pool.csv", "id_column": "id", "classes": list(CLASSES)}
    config["guidelines"]["classes"] = {c: f"what belongs to {c}" for c in CLASSES}
    config["vendor"]["params"]["undo_window_s"] = 0  # answers reach the loop at once
    config["collect"] = {"poll_interval_s": 0.2, "timeout_s": RUN_TIMEOUT_S}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(config))
    assert "label" not in (tmp_path / "pool.csv").read_text().splitlines()[0]

    project_dir = tmp_path / "project"
    run_log = tmp_path / "run.log"
    with open(run_log, "w") as log:
        run = subprocess.Popen([*crowdloop_cmd(), "run", str(tmp_path / "own.yaml"), "-p", str(project_dir)],
                               stdout=log, stderr=subprocess.STDOUT, env=cli_env)
    annotate = None
    try:
        # the app first (its port is in the link), once `run` has created the project
        deadline = time.monotonic() + 90
        while not (project_dir / "project.json").exists():
            assert run.poll() is None and time.monotonic() < deadline, run_log.read_text()[-3000:]
            time.sleep(0.2)
        base, annotate = start_annotate(str(project_dir), tmp_path / "annotate.log", env=cli_env)
        link = add_annotator(project_dir, base, cli_env, run, run_log)
        assert link.startswith(f"{base}/?token=")

        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        assert page.goto(link).status == 200
        answered: dict[str, str] = {}
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while run.poll() is None:
            assert time.monotonic() < deadline, f"the loop did not stop: {run_log.read_text()[-3000:]}"
            if page.locator("#item").count():
                if not answered:  # the guidelines, open before the first answer, and each class's note
                    assert page.locator("#guidelines").get_attribute("open") is not None
                    assert page.locator("#guidelines .guide").inner_text() == config["guidelines"]["text"]
                    assert page.locator("#class-notes dd").all_inner_texts() == [f"what belongs to {c}" for c in CLASSES]
                item = page.locator("#item").get_attribute("data-item")
                assert item not in answered  # one answer per item (redundancy 1)
                with page.expect_navigation():
                    page.locator(f'button.label[value="{key[item]}"]').click()
                answered[item] = key[item]
            else:  # nothing dispatched right now: the loop is training or collecting
                time.sleep(0.3)
                page.goto(f"{base}/")
        assert run.returncode == 0, run_log.read_text()[-3000:]
        assert not errors
    finally:
        stop_process(run, timeout_s=15)
        if annotate is not None:
            stop_process(annotate, timeout_s=15)

    state = json.loads(cli(["status", "-p", str(project_dir), "--json"], cli_env).stdout)
    assert state["finished"] and state["stop_reason"].startswith("stabilizing_predictions"), state["stop_reason"]
    last = state["rounds"][-1]
    assert state["reference_accuracy"] is None and last["accuracy"] is None  # no ground truth anywhere
    assert last["n_eval_labels"] == config["evaluation"]["max_items"]
    low, high = last["ci_low"], last["ci_high"]
    assert low < last["estimated_accuracy"] < high

    out = tmp_path / "labels.csv"
    exported = cli(["export", "-p", str(project_dir), "--format", "csv", "--machine", "--out", str(out)], cli_env)
    assert exported.returncode == 0, exported.stderr
    labels = pd.read_csv(out, dtype={"item_id": str, "label": str})
    assert len(labels) == len(key) and set(labels["item_id"]) == set(key)  # every pool item, once
    assert {"f0", "f7", "confidence", "n_judgments"} <= set(labels.columns)  # the pool's own columns ride along
    human = labels[labels["source"] == "human"]
    machine = labels[labels["source"] == "machine"]
    assert len(human) + len(machine) == len(labels)
    # every human label is the annotator's answer, which is the key's; training and audit items alike
    assert dict(zip(human["item_id"], human["label"], strict=True)) == answered
    assert (human["n_judgments"] == 1).all()
    # the stopped model's true accuracy on the items it never saw lies in the interval it reported
    true_accuracy = float((machine["label"] == machine["item_id"].map(key)).mean())
    assert low <= true_accuracy <= high, (low, true_accuracy, high)
    assert (project_dir / "labels.jsonl").stat().st_size > 0
