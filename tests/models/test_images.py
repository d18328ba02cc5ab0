"""Image pools (local folder, S3 prefix, Fashion-MNIST), the annotation app showing them, and
one loop round with the CNN through the engine."""

from __future__ import annotations

import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.errors import ConfigError, PoolError
from crowdloop.models.images import FASHION_MNIST_CLASSES, load_image_pool
from crowdloop.vendors.local import item_key
from crowdloop.vendors.local_app import create_app
from tests.conftest import small_config
from tests.models.conftest import majority_share, write_idx

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CROWDLOOP_CACHE_DIR", str(tmp_path / "cache"))


def _png(value: int, size: int = 6, rgb: bool = False) -> bytes:
    from torchvision.io import encode_png

    img = torch.full((3 if rgb else 1, size, size), value, dtype=torch.uint8)
    img[:, 0, 0] = 255 - value  # not constant, so the decode is checked pixel by pixel
    return encode_png(img).numpy().tobytes()


def _folder(root: Path, classes=("cat", "dog"), n=3, size=6) -> Path:
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i}.png").write_bytes(_png(40 * c + i, size))
    return root


def _pool_cfg(**pool):
    return parse_config(small_config(pool=pool)).pool


def test_class_subfolders_give_labels_and_files(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "dog" / "notes.txt").write_text("ignored")
    pool = load_image_pool(_pool_cfg(source="images", path=str(root), image_mode="gray"))
    assert pool.ids.tolist() == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png"]
    assert pool.y.tolist() == ["cat"] * 3 + ["dog"] * 3 and pool.classes == ("cat", "dog")
    assert pool.X.shape == (6, 36) and pool.X.dtype == np.float32
    assert pool.X[4, 0] == 255 - 41 and pool.X[4, 1] == 41
    assert pool.content_kind == "image" and Path(pool.content[0]).read_bytes() == (root / "cat" / "0.png").read_bytes()
    rgb = load_image_pool(_pool_cfg(source="images", path=str(root), image_size=4, max_items=4))
    assert rgb.X.shape == (4, 3 * 4 * 4) and len(set(rgb.ids.tolist())) == 4


def test_flat_folder_needs_classes_and_sizes_must_match(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        (flat / f"{i}.png").write_bytes(_png(i * 10))
    with pytest.raises(PoolError, match="no label_column and no classes given"):
        load_image_pool(_pool_cfg(source="images", path=str(flat)))
    pool = load_image_pool(_pool_cfg(source="images", path=str(flat), classes=["a", "b"]))
    assert pool.y is None and len(pool) == 4
    (flat / "big.png").write_bytes(_png(5, size=9))
    with pytest.raises(PoolError, match=r"^pool.image_size: image 'big.png' is 9×9 but '0.png' is 6×6; set image_size"):
        load_image_pool(_pool_cfg(source="images", path=str(flat), classes=["a", "b"]))
    assert load_image_pool(_pool_cfg(source="images", path=str(flat), classes=["a", "b"], image_size=6)).X.shape == (5, 108)
    (flat / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(PoolError, match="cannot decode image"):
        load_image_pool(_pool_cfg(source="images", path=str(flat), classes=["a", "b"], image_size=6))
    with pytest.raises(PoolError, match=r"directory .* not found"):
        load_image_pool(_pool_cfg(source="images", path=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="path is required for source 'images'"):
        _pool_cfg(source="images")


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    """A 40,000 x 40,000 PNG of a few hundred KB took 8 GB to decode; twice that side, more memory
    than the machine has. The header is read first and the image refused in one line."""
    from PIL import Image

    root = tmp_path / "imgs"
    for cls, value in (("a", 10), ("b", 200)):
        (root / cls).mkdir(parents=True)
        Image.new("L", (8, 8), value).save(root / cls / "ok.png")
    big = root / "a" / "big.png"
    Image.new("1", (10_000, 9_000), 0).save(big)  # 90 M pixels: just over the limit, Pillow only warns
    assert big.stat().st_size < 200_000
    cfg = _pool_cfg(source="images", path=str(root), image_size=8, image_mode="gray")
    with pytest.raises(PoolError, match=r"^pool.path: image '.*big.png' is 10,000 x 9,000 pixels; expected at most "
                                        r"89,478,485 pixels"):
        load_image_pool(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.new("1", (14_000, 14_000), 0).save(big)  # beyond twice the limit Pillow will not open it at all
    with pytest.raises(PoolError, match=r"^pool.path: image '.*big.png' is over 178,956,970 pixels"):
        load_image_pool(cfg)
    big.unlink()
    assert load_image_pool(cfg).X.shape == (2, 64)


def test_a_pool_whose_pixels_exceed_the_machines_memory_is_refused_before_loading(tmp_path):
    """Every image's pixels are held as float32; a folder of large photos ran until the kernel
    killed the process. Here: enough links to one 4096 x 4096 RGB PNG (201 MB as float32 each)
    to exceed what this machine has available."""
    from PIL import Image

    from crowdloop.models.images import available_memory_bytes

    available = available_memory_bytes()
    assert available is not None, "expected /proc/meminfo (Linux)"
    per_image = 4096 * 4096 * 3 * 4
    n = available // per_image + 2
    flat = tmp_path / "photos"
    flat.mkdir()
    Image.new("RGB", (4096, 4096), (10, 200, 30)).save(flat / "0000.png")
    for i in range(1, n):
        os.link(flat / "0000.png", flat / f"{i:04d}.png")
    cfg = {"source": "images", "path": str(flat), "classes": ["a", "b"]}
    with pytest.raises(PoolError, match=rf"^pool.image_size: {n:,} images of 4096×4096×3 \(as '0000.png'\) need "
                                        rf"{n * per_image / 1e9:.1f} GB as float32 pixels and this machine has "
                                        r"[0-9.]+ GB available; set pool.image_size \(e.g. 64\)"):
        load_image_pool(_pool_cfg(**cfg))
    assert load_image_pool(_pool_cfg(**cfg, image_size=8, max_items=2)).X.shape == (2, 192)


@pytest.mark.parametrize("layout", ["v2", "v1", "unlimited", "none"])
def test_available_memory_is_capped_by_the_containers_limit(tmp_path, layout):
    """In a container limited to 4 GB on a 64 GB host, MemAvailable says 60 GB and the kernel kills
    the process at 4 GB: the cgroup's limit minus its usage is the figure."""
    from crowdloop.models.images import available_memory_bytes

    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (cgroup / "memory").mkdir(parents=True)
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal:       67108864 kB\nMemAvailable:   62914560 kB\n")
    if layout == "v2":
        (cgroup / "memory.max").write_text("4294967296\n")
        (cgroup / "memory.current").write_text("1073741824\n")
    elif layout == "v1":
        (cgroup / "memory" / "memory.limit_in_bytes").write_text("4294967296\n")
        (cgroup / "memory" / "memory.usage_in_bytes").write_text("1073741824\n")
    elif layout == "unlimited":
        (cgroup / "memory.max").write_text("max\n")
        (cgroup / "memory.current").write_text("1073741824\n")
        (cgroup / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
        (cgroup / "memory" / "memory.usage_in_bytes").write_text("1073741824\n")
    expected = {"v2": 3 * 2**30, "v1": 3 * 2**30, "unlimited": 62914560 * 1024, "none": 62914560 * 1024}[layout]
    assert available_memory_bytes(proc, cgroup) == expected
    assert available_memory_bytes(tmp_path / "no-proc", tmp_path / "no-cgroup") is None


def test_images_under_an_s3_prefix(tmp_path, s3_endpoint, s3_bucket):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for cls, base in (("shirt", 10), ("shoe", 200)):
        for i in range(3):
            s3.put_object(Bucket=s3_bucket, Key=f"data/imgs/{cls}/{i}.png", Body=_png(base + i))
    s3.put_object(Bucket=s3_bucket, Key="data/imgs/readme.md", Body=b"not an image")
    s3.put_object(Bucket=s3_bucket, Key="data/imgs/shoe/._0.png", Body=b"\x00\x05\x16\x07 a Mac's resource fork")
    url = f"s3://{s3_bucket}/data/imgs?endpoint_url={s3_endpoint}"
    pool = load_image_pool(_pool_cfg(source="images", path=url, image_mode="gray"))
    assert pool.ids.tolist() == [f"{c}/{i}.png" for c in ("shirt", "shoe") for i in range(3)]
    assert pool.y.tolist() == ["shirt"] * 3 + ["shoe"] * 3
    assert pool.X[4, 1] == 201
    cached = Path(pool.content[4])
    assert cached.is_file() and str(tmp_path / "cache") in str(cached)
    assert cached.read_bytes() == _png(201)
    again = load_image_pool(_pool_cfg(source="images", path=url, image_mode="gray"))  # from the cache
    assert np.array_equal(again.X, pool.X)
    with pytest.raises(PoolError, match="no png/jpg/jpeg/gif/webp images under"):
        load_image_pool(_pool_cfg(source="images", path=f"s3://{s3_bucket}/empty?endpoint_url={s3_endpoint}"))


def test_fashion_mnist_pool_through_torchvision(fashion_dir):
    cfg = _pool_cfg(source="fashion_mnist", path=str(fashion_dir), max_items=300)
    from crowdloop.models.images import load_fashion_mnist_pool

    pool = load_fashion_mnist_pool(cfg)
    assert len(pool) == 300 and pool.X.shape == (300, 784) and pool.content_kind == "pixels"
    assert pool.classes == FASHION_MNIST_CLASSES and set(pool.y.tolist()) <= set(FASHION_MNIST_CLASSES)
    assert pool.X.min() >= 0 and pool.X.max() <= 255 and pool.ids[0].startswith("fmnist-train-")
    both = load_fashion_mnist_pool(_pool_cfg(source="fashion_mnist", path=str(fashion_dir), split="all"))
    assert any(i.startswith("fmnist-test-") for i in both.ids.tolist())
    assert np.array_equal(load_fashion_mnist_pool(cfg).ids, pool.ids)  # the subset is fixed


def test_generated_idx_files_and_missing_files(tmp_path):
    labels = np.arange(40) % 10
    write_idx(tmp_path / "f", "train", np.tile(labels[:, None, None] * 10, (1, 28, 28)), labels)
    write_idx(tmp_path / "f", "t10k", np.zeros((10, 28, 28)), labels[:10])
    from crowdloop.models.images import load_fashion_mnist_pool

    pool = load_fashion_mnist_pool(_pool_cfg(source="fashion_mnist", path=str(tmp_path / "f")))
    assert len(pool) == 40 and pool.X[3, 100] == 30 and pool.y[3] == FASHION_MNIST_CLASSES[3]
    with pytest.raises(PoolError, match=r"train-images-idx3-ubyte\[.gz\] not found in .*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist_pool(_pool_cfg(source="fashion_mnist", path=str(tmp_path / "empty")))


def test_the_annotation_app_shows_a_fashion_mnist_image(tmp_path, fashion_dir):
    cfg = parse_config(small_config(**{
        "pool": {"source": "fashion_mnist", "path": str(fashion_dir), "max_items": 200, "test_size": 0.25},
        "vendor": {"name": "local", "params": {}}, "sampler.initial_size": 3}))
    p = engine.Project.prepare(cfg, str(tmp_path / "project"))
    engine.run_round(p, 0, until="dispatch")
    v = p.vendor
    token = v.add_annotator("ann")
    client = TestClient(create_app(v), base_url="http://testserver", follow_redirects=False)
    client.get(f"/?token={token}")
    page = client.get("/").text
    assert "T-shirt/top" in page and "Ankle boot" in page  # the class buttons
    src = re.search(r'<img class="item" id="item-image" alt="[^"]*" src="([^"]+)"', page).group(1)
    img = client.get(src)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    width, height = struct.unpack(">II", img.content[16:24])
    assert (width, height) == (28, 28)
    from torchvision.io import ImageReadMode, decode_png

    shown = decode_png(torch.frombuffer(bytearray(img.content), dtype=torch.uint8), mode=ImageReadMode.GRAY)[0].numpy()
    item = re.search(r'data-item="([^"]+)"', page).group(1)
    pixels = p.pool.X[p.index_of[item]].reshape(28, 28)
    expected = 255 - np.round(255 * pixels / pixels.max())  # dark ink on white, like the digits
    assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 1
    assert client.get(f"/image/{src.split('/')[2]}/{item_key('fmnist-train-99999')}").status_code == 404


def test_loop_rounds_with_the_cnn_through_the_engine(tmp_path, fashion_dir):
    cfg = parse_config(small_config(**{
        "pool": {"source": "fashion_mnist", "path": str(fashion_dir), "max_items": 300, "test_size": 0.2},
        "model": {"estimator": "crowdloop.models.torch.TorchClassifier", "scale": False,
                  "params": {"width": 8, "epochs": 15, "batch_size": 16, "warm_start": True, "warm_epochs": 5, "random_state": 0,
                             "num_threads": 1}},
        "sampler": {"name": "bald", "batch_size": 20, "initial_size": 60, "params": {"n_samples": 5}},
        "stopping.max_rounds": 2}))
    p = engine.run_in_process(engine.Project.prepare(cfg, str(tmp_path / "project")))
    metrics = p.metrics()
    assert [m["n_labeled"] for m in metrics] == [0, 60, 80]
    # Far above the same split's chance baseline (0.133 here): seeds 0-2 gave 0.60-0.62, the bar is 0.40.
    assert metrics[1]["accuracy"] is not None and metrics[2]["accuracy"] >= 3 * majority_share(p.test.y)
    assert engine.select(p, 1)["strategy"] == "bald"
    from crowdloop.storage import read_json

    assert "warm_from_round" not in read_json(p.store, keys.round_key(1, keys.TRAIN))
    assert read_json(p.store, keys.round_key(2, keys.TRAIN))["warm_from_round"] == 1
    model = p.load_model(2)
    assert model.warm_started_ and model.embed(p.pool.X[:3]).shape == (3, 128)


def test_a_phone_photo_is_decoded_upright_as_annotators_see_it(tmp_path):
    """A phone stores a portrait photo sideways with an EXIF orientation tag; browsers show it
    upright, and the model now sees the same picture (it saw the sideways one)."""
    from PIL import Image

    from crowdloop.models.images import decode

    pixels = np.zeros((20, 40), dtype=np.uint8)  # stored 40 wide, 20 high: left half dark, right half light
    pixels[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(pixels).save(tmp_path / "portrait.jpg", exif=exif.tobytes(), quality=95)
    shown = decode(tmp_path / "portrait.jpg", mode="gray")
    assert shown.shape == (1, 40, 20)  # upright: 20 wide, 40 high
    assert shown[0, :15].mean() < 60 and shown[0, 25:].mean() > 200  # the dark half on top after the turn


def test_an_animated_gif_is_its_first_frame_and_every_format_takes_the_pools_mode(tmp_path):
    """An animated GIF decoded to (frames, C, H, W): a feature row of every frame, the pool's
    shapes mixed. GIF and WebP came out RGB whatever mode asked for: a gray pool got rows three
    times as long from them."""
    from PIL import Image

    from crowdloop.models.images import decode

    first, second = np.zeros((8, 8), dtype=np.uint8), np.full((8, 8), 255, dtype=np.uint8)
    Image.fromarray(first).save(tmp_path / "a.gif", save_all=True, append_images=[Image.fromarray(second)])
    shown = decode(tmp_path / "a.gif", mode="gray")
    assert shown.shape == (1, 8, 8) and shown.max() < 30
    assert decode(tmp_path / "a.gif", mode="rgb").shape == (3, 8, 8)
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(tmp_path / "b.webp", lossless=True)
    gray = decode(tmp_path / "b.webp", mode="gray")
    assert gray.shape == (1, 8, 8) and abs(int(gray.mean()) - 200) <= 1
