"""Hostile input: arbitrary config documents and store keys give typed one-line errors, never crashes."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crowdloop.config import LoopConfig, parse_config
from crowdloop.errors import ConfigError, InvalidKeyError
from crowdloop.storage import validate_key
from tests.conftest import small_config

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                         max_leaves=20)
SECTIONS = ["project", "seed", "pool", "model", "sampler", "vendor", "consensus", "collect", "pay", "stopping",
            "baseline", "storage", "scale"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_is_a_config_or_a_one_line_config_error(doc) -> None:
    try:
        config = parse_config(doc, source="fuzz.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.yaml")
    else:
        assert isinstance(config, LoopConfig)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SECTIONS), documents)
def test_any_value_in_any_section_of_a_valid_config(section: str, value) -> None:
    doc = small_config()
    doc[section] = value
    try:
        parse_config(yaml.safe_load(yaml.safe_dump(doc)), source="fuzz.yaml")
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith("fuzz.yaml: ")


@given(st.text(max_size=60))
def test_store_keys_are_validated_or_refused_with_a_typed_error(key: str) -> None:
    try:
        validate_key(key)
    except InvalidKeyError as exc:
        assert "\n" not in str(exc).replace(repr(key), "")
    else:
        assert not key.startswith("/") and ".." not in key.split("/") and "\\" not in key
