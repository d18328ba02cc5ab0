"""Vendor plug-ins: a real package pip-installed into a temporary path entry, found through entry points."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from crowdloop import engine, registry
from crowdloop.config import parse_config
from crowdloop.errors import ConfigError, RegistryError
from crowdloop.storage.local import LocalStore
from crowdloop.testing import check_vendor, make_context
from tests.conftest import REPO, small_config

EXAMPLE = REPO / "docs" / "examples" / "rulebook"
DIST = "crowdloop-rulebook"


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed: {proc.stderr[-2000:]}")


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> str:
    """The docs' example package plus two broken plug-ins, installed for this module only."""
    src = tmp_path_factory.mktemp("plugin") / "pkg"
    shutil.copytree(EXAMPLE, src)
    (src / "broken_vendor.py").write_text("raise RuntimeError('this plug-in is broken on import')\n")
    (src / "sdk_vendor.py").write_text("import acme_labeling_sdk  # not installed\n")
    pyproject = (src / "pyproject.toml").read_text()
    pyproject = pyproject.replace('rulebook = "rulebook_vendor:RuleBook"', textwrap.dedent('''\
        rulebook = "rulebook_vendor:RuleBook"
        broken = "broken_vendor:Vendor"
        acme = "sdk_vendor:Vendor"'''))
    pyproject = pyproject.replace('py-modules = ["rulebook_vendor"]',
                                  'py-modules = ["rulebook_vendor", "broken_vendor", "sdk_vendor"]')
    (src / "pyproject.toml").write_text(pyproject)
    # pip builds and installs the package for real, but into a temporary target put on sys.path
    # (where importlib.metadata finds its entry points as it would in site-packages): the venv
    # is left as it was, whatever the order of the tests or an interrupted run.
    target = tmp_path_factory.mktemp("site")
    _pip("install", "--no-deps", "--no-build-isolation", "--target", str(target), str(src))
    assert (target / "rulebook_vendor.py").exists() and list(target.glob(f"{DIST.replace('-', '_')}-*.dist-info"))
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield "rulebook"
    finally:
        sys.path.remove(str(target))
        importlib.invalidate_caches()
        _forget_plugin_modules()


def _forget_plugin_modules() -> None:
    """Drop the plug-ins' modules and the registry's cached classes, so the next import is a first one."""
    for name in ("rulebook_vendor", "broken_vendor", "sdk_vendor"):
        sys.modules.pop(name, None)
    for name in ("rulebook", "broken", "acme"):
        registry.vendors._cache.pop(name, None)


def test_installed_plugins_are_listed_without_importing_them(plugin):
    _forget_plugin_modules()  # whichever test loaded them before (any order)
    names = registry.vendors.names()
    assert {"rulebook", "broken", "acme", "simulated", "manifest", "local"} <= set(names)
    assert not {"rulebook_vendor", "broken_vendor", "sdk_vendor"} & set(sys.modules)


def test_a_broken_plugin_fails_alone_with_one_line(plugin):
    with pytest.raises(RegistryError) as broken:
        registry.vendors.load("broken")
    assert str(broken.value) == ("vendor 'broken' (broken_vendor:Vendor) failed to load: "
                                 "RuntimeError: this plug-in is broken on import")
    with pytest.raises(RegistryError, match=r"vendor 'acme' needs the missing package 'acme_labeling_sdk': "
                                            r"install the package that provides 'acme_labeling_sdk'"):
        registry.vendors.load("acme")
    assert registry.vendors.load("rulebook").__name__ == "RuleBook"
    assert registry.vendors.load("simulated").__name__ == "SimulatedCrowd"


def test_unknown_names_list_the_known_ones_and_builtin_extras_name_the_install():
    with pytest.raises(RegistryError, match=r"unknown vendor 'mturkk'; known vendors: .*local, manifest, .*simulated"):
        registry.vendors.load("mturkk")
    fake = registry.Registry("crowdloop.vendors", "vendor")
    fake._entry_points = lambda: {"mturk": EntryPoint("mturk", "crowdloop_no_such_sdk_module:Vendor", "crowdloop.vendors")}
    with pytest.raises(RegistryError, match=r"vendor 'mturk' needs the missing package 'crowdloop_no_such_sdk_module': "
                                            r"pip install 'crowdloop\[mturk\]'"):
        fake.load("mturk")


def _iris_context(tmp_path: Path):
    from sklearn.datasets import load_iris

    iris = load_iris()
    rows = {f"item-{i:04d}": iris.data[i * 37] for i in range(4)}
    ctx = make_context(LocalStore(tmp_path), name="rulebook", classes=list(iris.target_names))
    def payload(item):
        return {"kind": "tabular", "columns": list(iris.feature_names), "values": rows[item].tolist()}
    return type(ctx)(**{**ctx.__dict__, "item_payload": payload, "ground_truth": None})


def test_the_plugin_passes_the_vendor_contract(plugin, tmp_path):
    cls = registry.vendors.load(plugin)
    report = check_vendor(cls, context=_iris_context(tmp_path))
    assert report.n_annotations == 8 and not report.skipped


def test_a_project_configured_with_a_bad_plugin_fails_before_running(plugin, tmp_path):
    cfg = parse_config(small_config(vendor={"name": "broken", "params": {}}))
    with pytest.raises(ConfigError, match=r"^vendor.name: vendor 'broken' .* failed to load: RuntimeError"):
        engine.Project.prepare(cfg, str(tmp_path / "p"))


def test_the_loop_runs_with_the_installed_plugin(plugin, tmp_path):
    cfg = parse_config(small_config(**{
        "pool.name": "iris", "sampler.initial_size": 9, "sampler.batch_size": 9, "stopping.max_rounds": 3,
        "vendor": {"name": plugin, "params": {"seconds_per_task": 6}},
        "consensus.method": "majority_vote", "consensus.redundancy": 2, "collect.timeout_s": 5}))
    p = engine.Project.prepare(cfg, str(tmp_path / "project"))
    r = 0
    while engine.run_round(p, r) is None:
        r += 1
    assert r == 3
    anns = p.annotations()
    assert len(anns) == 27 * 2 and {a.vendor for a in anns} == {"rulebook"}
    truth = dict(zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True))
    labels = p.human_labels(before_round=3)
    agreement = sum(lab.label == truth[lab.item_id] for lab in labels) / len(labels)
    assert len(labels) == 27 and agreement >= 0.85  # the rule of thumb is ~95% right on iris
    assert p.metrics()[-1]["n_labeled"] == 27 and p.metrics()[-1]["accuracy"] > 0.6  # chance is 1/3
    assert all(read["complete"] for read in (engine.collect(p, i) for i in range(3)))


@pytest.mark.slow
def test_the_prefect_flow_runs_with_the_installed_plugin(plugin, prefect_api_url, tmp_path):
    from crowdloop.flows.loop import active_learning_loop

    cfg = parse_config(small_config(**{
        "project": "plugin-flow", "pool.name": "iris", "sampler.initial_size": 9, "sampler.batch_size": 9,
        "stopping.max_rounds": 2, "vendor": {"name": plugin, "params": {}},
        "consensus.method": "majority_vote", "consensus.redundancy": 2, "collect.timeout_s": 5}))
    state = active_learning_loop(cfg, str(tmp_path / "flow"))
    assert state["stop_reason"] == "max_rounds=2 reached"
    assert state["totals"]["n_labeled"] == 18 and state["totals"]["n_judgments"] == 36
    assert {a.vendor for a in engine.Project.open(str(tmp_path / "flow")).annotations()} == {"rulebook"}
