"""Vendors declare capabilities; the engine plans by them, never by a vendor's name (issue 17).

A config asking for what its vendor cannot do fails at ``crowdloop check`` and before round 0,
with one line naming the vendor and the missing capability, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crowdloop import engine, registry
from crowdloop.cli import app
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.errors import ConfigError
from crowdloop.vendor import NEEDS_GROUND_TRUTH, capabilities_of, required_capabilities
from crowdloop.vendors.label_studio import LabelStudioVendor
from crowdloop.vendors.local import LocalVendor
from crowdloop.vendors.manifest import ManifestVendor
from crowdloop.vendors.mturk import MTurkVendor
from crowdloop.vendors.simulated import SimulatedCrowd
from tests.conftest import small_config

GOLD = {"gold.share": 0.2, "gold.n_items": 10}
ADAPTIVE = {"consensus.confidence_threshold": 0.8, "consensus.min_judgments": 1}

REFUSED = [  # (vendor section, quality settings, the missing capability)
    ({"name": "label_studio", "params": {}}, GOLD, "blocks_workers"),
    ({"name": "label_studio", "params": {}}, {"consensus.block_rings": True}, "blocks_workers"),  # rings of colluders
    ({"name": "mturk", "params": {"items_per_hit": 5}}, ADAPTIVE, "excludes_workers_per_item"),
    ({"name": "mturk", "params": {"items_per_hit": 5}}, GOLD, "excludes_workers_per_item"),
    # the random twin of baseline.random buys every label again: a second bill with people
    *(({"name": name, "params": params}, {"baseline.random": True}, "needs_ground_truth")
      for name, params in (("mturk", {}), ("local", {}), ("manifest", {}),
                           ("prolific", {"app_url": "https://label.example.org"}))),
]


def test_what_each_vendor_can_do():
    assert capabilities_of(SimulatedCrowd) == {"blocks_workers", "excludes_workers_per_item", "needs_ground_truth"}
    assert capabilities_of(LocalVendor) == capabilities_of(ManifestVendor) == {"blocks_workers", "excludes_workers_per_item"}
    assert capabilities_of(MTurkVendor) == {"blocks_workers", "excludes_workers_per_item", "images_by_url", "pays"}
    assert capabilities_of(MTurkVendor, {"items_per_hit": 3}) == {"blocks_workers", "images_by_url", "pays"}
    assert capabilities_of(LabelStudioVendor) == {"excludes_workers_per_item", "images_by_url"}
    assert "blocks_workers" in capabilities_of(LabelStudioVendor, {"block_removes_membership": True})


def test_the_settings_that_ask_for_capabilities():
    cfg = parse_config(small_config(**GOLD, **ADAPTIVE, **{"consensus.block_below_agreement": 0.5}))
    need = required_capabilities(cfg)
    assert set(need) == {"blocks_workers", "excludes_workers_per_item"} and need["blocks_workers"].startswith("gold.share=0.2")
    assert required_capabilities(parse_config(small_config())) == {}
    baseline = required_capabilities(parse_config(small_config(**{"baseline.random": True})))
    assert set(baseline) == {NEEDS_GROUND_TRUTH} and baseline[NEEDS_GROUND_TRUTH].startswith("baseline.random=true")


@pytest.mark.parametrize("vendor, quality, missing", REFUSED)
def test_a_config_asking_for_a_missing_capability_fails_at_check_and_before_round_0(tmp_path: Path, vendor, quality,
                                                                                   missing):
    cfg = small_config(vendor=vendor, **quality)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(app, ["check", str(path)])
    assert out.exit_code == 2
    line = out.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"error: {path}: vendor.name: vendor {vendor['name']!r}")
    assert f"lacks the capability {missing!r}" in line
    with pytest.raises(ConfigError, match=f"vendor {vendor['name']!r} cannot .*{missing!r}") as caught:
        Project.prepare(parse_config(cfg), str(tmp_path / "p"))
    assert len(str(caught.value).splitlines()) == 1
    assert not (tmp_path / "p").exists()  # nothing was written, nothing sent


def test_label_studio_blocks_when_its_only_way_is_allowed(tmp_path: Path):
    cfg = small_config(vendor={"name": "label_studio", "params": {"block_removes_membership": True}}, **GOLD)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(app, ["check", str(path)])
    assert out.exit_code == 0, out.output


def test_ground_truth_goes_by_capability_not_by_name(tmp_path: Path):
    class Oracle(SimulatedCrowd):  # the simulated crowd under another name
        name = "oracle"

    class Plain(LocalVendor):  # a vendor named 'simulated' that does not declare needs_ground_truth
        name = "simulated"

    registry.vendors.register("oracle", Oracle)
    plain_registered = False
    try:
        p = Project.prepare(parse_config(small_config(vendor={"name": "oracle", "params": {"n_workers": 6}})),
                            str(tmp_path / "oracle"))
        assert NEEDS_GROUND_TRUTH in p.capabilities and p.vendor.context.ground_truth is not None
        engine.run_round(p, 0, until="dispatch")
        assert engine.dispatch(p, 0)["refs"]
        registry.vendors.register("simulated", Plain, replace=True)
        plain_registered = True
        q = Project.prepare(parse_config(small_config(vendor={"name": "simulated", "params": {}}, project="plain")),
                            str(tmp_path / "plain"))
        assert q.vendor.context.ground_truth is None
    finally:
        registry.vendors.unregister("oracle")
        if plain_registered:
            registry.vendors.unregister("simulated")
