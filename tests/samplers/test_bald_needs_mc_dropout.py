"""A loop configured with BALD/BatchBALD gets a model with MC-dropout, or one line (issue 19, point 12).

Without stochastic passes both samplers rank by predictive entropy; a loop whose records say
``bald`` must not be doing that.
"""

from __future__ import annotations

import pytest

from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.errors import ConfigError
from tests.conftest import small_config

TORCH = {"estimator": "crowdloop.models.torch.TorchClassifier", "scale": False,
         "params": {"width": 8, "epochs": 2, "num_threads": 1, "random_state": 0}}


@pytest.mark.parametrize("sampler", ["bald", "batchbald"])
@pytest.mark.parametrize("model,why", [
    ({"estimator": "sklearn.linear_model.LogisticRegression"}, "sklearn.linear_model.LogisticRegression has none"),
    ({**TORCH, "scale": True}, "in a scaling Pipeline (model.scale: true)"),
    ({**TORCH, "params": {**TORCH["params"], "dropout": 0.0}}, "with dropout 0"),
    ({"estimator": "crowdloop.models.ensemble.SeedEnsemble", "scale": False,
      "params": {"estimator": "sklearn.linear_model.LogisticRegression", "n_members": 2}}, "SeedEnsemble has none"),
])
def test_a_model_without_mc_dropout_is_refused_for_bald(tmp_path, sampler: str, model: dict, why: str) -> None:
    cfg = parse_config(small_config(model=model, sampler={"name": sampler, "batch_size": 10, "initial_size": 20}))
    with pytest.raises(ConfigError) as info:
        Project.prepare(cfg, str(tmp_path / "p"))
    message = str(info.value)
    assert message.startswith(f"sampler.name: '{sampler}' needs a model with MC-dropout passes") and why in message, message
    assert "\n" not in message and not (tmp_path / "p").exists()  # nothing written


@pytest.mark.parametrize("model", [TORCH, {"estimator": "crowdloop.models.ensemble.SeedEnsemble", "scale": False,
                                           "params": {"estimator": "crowdloop.models.torch.TorchClassifier",
                                                      "params": TORCH["params"], "n_members": 2}}])
def test_a_model_with_mc_dropout_is_accepted(tmp_path, model: dict) -> None:
    cfg = parse_config(small_config(model=model, sampler={"name": "bald", "batch_size": 10, "initial_size": 20}))
    Project.prepare(cfg, str(tmp_path / "p"))
