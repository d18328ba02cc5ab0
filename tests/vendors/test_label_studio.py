"""Label Studio vendor: generated labeling configs, task data, settings from the environment."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from crowdloop.errors import ConfigError, VendorError
from crowdloop.storage import PrefixedStore
from crowdloop.storage.local import LocalStore
from crowdloop.vendor import VendorContext
from crowdloop.vendors import label_studio as lsv


@pytest.mark.parametrize("data_type, tag, field", [("text", "Text", "$text"), ("image", "Image", "$image"),
                                                     ("tabular", "Table", "$row")])
def test_labeling_config_is_valid_xml_with_escaped_classes(data_type: str, tag: str, field: str) -> None:
    classes = ["cat", 'say "hi"', "a<b&c"]
    root = ET.fromstring(lsv.labeling_config(classes, data_type))
    shown = root.find(tag)
    assert shown is not None and shown.get("value") == field and shown.get("name") == "item"
    choices = root.find("Choices")
    assert choices.get("toName") == "item" and choices.get("choice") == "single"
    assert [c.get("value") for c in choices.findall("Choice")] == classes


def test_task_data_per_kind() -> None:
    assert lsv.task_data({"kind": "text", "text": "<b>hi</b>"}, "text") == "<b>hi</b>"
    assert lsv.task_data({"kind": "image_url", "url": "https://x/y.png"}, "image") == "https://x/y.png"
    assert lsv.task_data({"kind": "tabular", "columns": ["a", "b"], "values": [1.5, 2]}, "tabular") == {"a": 1.5, "b": 2}
    with pytest.raises(VendorError, match="does not fit data_type 'text'"):
        lsv.task_data({"kind": "tabular", "columns": [], "values": []}, "text")


def test_connection_settings_come_only_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lsv.URL_ENV, raising=False)
    monkeypatch.delenv(lsv.KEY_ENV, raising=False)
    ctx = VendorContext(project="p", name="label_studio", seed=0, classes=("a", "b"),
                        store=PrefixedStore(LocalStore(tmp_path), "vendor/label_studio"), item_payload=lambda i: {})
    with pytest.raises(ConfigError, match=r"vendor\.params\.api_key: unknown field"):
        lsv.LabelStudioVendor({"api_key": "secret"}, ctx)
    vendor = lsv.LabelStudioVendor({}, ctx)
    with pytest.raises(VendorError, match="set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY in the environment"):
        _ = vendor.client


def test_pixel_grids_become_inline_png_images() -> None:
    import base64

    from crowdloop.errors import VendorError
    from crowdloop.vendors.label_studio import task_data

    url = task_data({"kind": "image", "pixels": [[0, 16], [8, 0]]}, "image")
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    import pytest

    with pytest.raises(VendorError, match="local file"):
        task_data({"kind": "image", "path": "/img/1.png"}, "image")
