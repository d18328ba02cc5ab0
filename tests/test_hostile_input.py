"""Hostile input: arbitrary config documents and store keys give typed one-line errors, never crashes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
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


# -- YAML text, not only parsed documents -------------------------------------------------------
_VALID_YAML = yaml.safe_dump(small_config())
_yaml_noise = st.sampled_from([
    "&a", "*a", "!!python/object/apply:os.system ['echo pwned']", "!!binary", "? ", "- ", ": ", "{", "}", "[", "]",
    "\t", "\x00", "\ufeff", "%YAML 1.1\n---\n", "---\n", "...\n", "|\n", ">-\n", "'", '"', "#", "\n  ", "<<: *a\n",
    "1e999", "-.inf", ".nan", "0x7fffffffffffffffffff", "~", "yes", "2026-13-45", "\\u0000",
])


@st.composite
def yaml_texts(draw) -> str:
    """A valid config with random edits, or YAML noise: what a broken editor save can produce."""
    if draw(st.booleans()):
        return "".join(draw(st.lists(st.one_of(st.characters(), _yaml_noise), max_size=20)))
    text = _VALID_YAML
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 8))
        insert = draw(st.one_of(_yaml_noise, st.text(max_size=6)))
        text = text[:at] + insert + text[at + cut:]
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(yaml_texts())
@example("2026-13-45")  # a date YAML resolves but cannot build: was a ValueError traceback (found by this test on CI)
@example("seed: 2026-02-30\n")
def test_any_yaml_text_is_a_config_or_a_one_line_config_error(tmp_path_factory, text: str) -> None:
    from crowdloop.config import load_config

    path = tmp_path_factory.getbasetemp() / "fuzz-config.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
    else:
        assert isinstance(config, LoopConfig)


@pytest.mark.parametrize("body, expected", [
    # billion laughs: nine anchors of nine aliases each stand for 9**9 values
    ("model:\n  estimator: sklearn.linear_model.LogisticRegression\n  params:\n    a0: &a0 [1,1,1,1,1,1,1,1,1]\n"
     + "".join(f"    a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 9)),
     "holds more than 100000 values"),
    ("model:\n  params:\n    deep: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("model:\n  params:\n    deep: " + "[" * 70 + "]" * 70 + "\n", "nested more than 64 levels deep"),
    ("vendor: !!python/object/apply:os.system ['touch /tmp/crowdloop-pwned']\n", "invalid YAML"),
])
def test_yaml_bombs_and_tags_are_refused_quickly(tmp_path, body: str, expected: str) -> None:
    import time

    from crowdloop.config import load_config

    path = tmp_path / "bomb.yaml"
    path.write_text(body)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    assert "\n" not in str(info.value)
    assert time.monotonic() - started < 10  # a bound, not a benchmark: the bomb is never expanded
    assert not Path("/tmp/crowdloop-pwned").exists()


@pytest.mark.parametrize("key", [
    "..", "../x", "a/../b", "a/..", "/etc/passwd", "//host/share", "a\\..\\b", "..\\x", "C:\\x", "a/\x00b", "\x00",
    "%2e%2e/x", "a/%2e%2e/b", "..%2fx", "%2e%2e%2fx", "a//b", "./a", "a/./b", "", " ", "~/x", "a/ b", "\u2025/x",
])
def test_store_keys_refuse_traversal_in_every_spelling(tmp_path, key: str) -> None:
    from crowdloop.storage.local import LocalStore

    store = LocalStore(tmp_path / "store")
    with pytest.raises(InvalidKeyError):
        validate_key(key)
    for op in (store.read_bytes, store.exists, lambda k: store.write_bytes(k, b"x")):
        with pytest.raises(InvalidKeyError):
            op(key)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and (tmp_path / "store") not in p.parents]
    assert outside == []


def test_unmeasured_durations_never_make_a_zero_reward() -> None:
    """Vendors that report no times (duration 0) used to crash the next dispatch (reward for 0 s)."""
    from crowdloop.config import parse_config
    from crowdloop.pay import expected_seconds, reward_for

    cfg = parse_config(small_config()).pay
    assert expected_seconds(cfg, [0.0, 0.0, 0.0]) == cfg.pilot_seconds_per_task
    assert expected_seconds(cfg, [0.0, 10.0, 20.0, 0.0]) == 15.0
    assert reward_for(expected_seconds(cfg, [0.0] * 5), cfg.hourly_wage) > 0
