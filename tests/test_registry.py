"""The plug-in registry: duplicate names are errors naming both sources; pool plug-ins can be selected.

Plug-ins come from throw-away distributions (a ``*.dist-info`` folder on a temporary path entry),
found by importlib.metadata exactly like pip-installed ones.
"""

from __future__ import annotations

import pytest

from crowdloop import registry
from crowdloop.checks import check_config
from crowdloop.config import parse_config
from crowdloop.errors import ConfigError, RegistryError
from tests.conftest import small_config
from tests.throwaway_dist import write_dist

POOLS_MODULE = '''
from crowdloop.models.datasets import load_sklearn_pool


def iris(cfg):
    """A pool plug-in: scikit-learn's iris under another source name."""
    return load_sklearn_pool(cfg)
'''
SAMPLERS_MODULE = '''
import numpy as np


def first_a(model, X, *, batch_size, rng, chunk_size=8192):
    return np.arange(batch_size)


def first_b(model, X, *, batch_size, rng, chunk_size=8192):
    return np.arange(batch_size)
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Two distributions that both claim the sampler 'clplug_dup', plus a pool plug-in."""
    root = tmp_path / "site"
    write_dist(root, "clplug-a", "1.0", {"crowdloop.samplers": {"clplug_dup": "clplug_samplers:first_a",
                                                                 "clplug_only_a": "clplug_samplers:first_a"},
                                          "crowdloop.pools": {"clplug_iris": "clplug_pools:iris"}},
               {"clplug_samplers.py": SAMPLERS_MODULE, "clplug_pools.py": POOLS_MODULE})
    write_dist(root, "clplug-b", "2.0", {"crowdloop.samplers": {"clplug_dup": "clplug_samplers:first_b"}})
    monkeypatch.syspath_prepend(str(root))  # also invalidates the import and metadata caches
    yield root
    for reg in (registry.samplers, registry.pools):
        for name in ("clplug_dup", "clplug_only_a", "clplug_iris"):
            reg._cache.pop(name, None)


def test_a_duplicate_entry_point_name_is_an_error_naming_both_sources(plugins) -> None:
    assert registry.samplers.names().count("clplug_dup") == 1
    with pytest.raises(RegistryError) as info:
        registry.samplers.load("clplug_dup")
    message = str(info.value)
    assert message.startswith("sampler 'clplug_dup' is registered twice (entry-point group 'crowdloop.samplers'), by ")
    assert "clplug-a 1.0 (clplug_samplers:first_a)" in message and "clplug-b 2.0 (clplug_samplers:first_b)" in message
    assert message.endswith("uninstall one of them") and "\n" not in message
    with pytest.raises(RegistryError, match="registered twice"):
        registry.samplers.check_name("clplug_dup")
    assert registry.samplers.load("clplug_only_a").__name__ == "first_a"  # the others load as before


def test_check_config_names_the_duplicate_under_its_field(plugins, tmp_path) -> None:
    cfg = parse_config(small_config(**{"sampler.name": "clplug_dup"}))
    with pytest.raises(ConfigError, match=r"^cfg.yaml: sampler.name: sampler 'clplug_dup' is registered twice"):
        check_config(cfg, source="cfg.yaml", location=str(tmp_path / "p"))


def test_register_refuses_a_taken_name_unless_replace(plugins) -> None:
    def mine(model, X, *, batch_size, rng, chunk_size=8192):
        return list(range(batch_size))

    with pytest.raises(RegistryError, match=r"^sampler 'margin' is already registered by crowdloop \S+ "
                                            r"\(crowdloop.samplers.uncertainty:margin_sampling\); pass replace=True"):
        registry.samplers.register("margin", mine)
    with pytest.raises(RegistryError, match=r"'clplug_only_a' is already registered by clplug-a 1.0"):
        registry.samplers.register("clplug_only_a", mine)
    registry.samplers.register("clplug_mine", mine)
    try:
        with pytest.raises(RegistryError, match=r"'clplug_mine' is already registered in this process \(.*mine\)"):
            registry.samplers.register("clplug_mine", lambda *a, **k: None)
        registry.samplers.register("margin", mine, replace=True)  # tests and notebooks may shadow on purpose
        assert registry.samplers.load("margin") is mine
    finally:
        registry.samplers.unregister("clplug_mine")
        registry.samplers.unregister("margin")
    assert registry.samplers.load("margin").__name__ == "margin_sampling"


def test_a_pool_plugin_can_be_selected_and_an_unknown_one_lists_the_known(plugins, tmp_path) -> None:
    from crowdloop.engine import Project

    doc = small_config(**{"pool": {"source": "clplug_iris", "name": "iris", "test_size": 0.3},
                          "sampler.batch_size": 6, "sampler.initial_size": 6})
    report = check_config(parse_config(doc), source="cfg.yaml", location=str(tmp_path / "p"))
    assert report.n_items == 150 and report.classes == ("setosa", "versicolor", "virginica")
    project = Project.prepare(parse_config(doc), str(tmp_path / "p"))  # the engine loads it through the registry
    assert len(project.pool) == 105
    doc["pool"]["source"] = "clplug_irsi"
    with pytest.raises(ConfigError) as info:
        check_config(parse_config(doc), source="cfg.yaml", location=str(tmp_path / "q"))
    assert str(info.value).startswith("cfg.yaml: pool.source: unknown pool source 'clplug_irsi'; known pool sources: "
                                      "clplug_iris, csv, fashion_mnist, images, parquet, sharded, sklearn")
