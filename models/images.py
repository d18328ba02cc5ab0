"""Image pools: a folder of images (local or under an S3 prefix) and Fashion-MNIST.

Features are the decoded pixels, flattened channel-first as float32 in [0, 255] (what
``crowdloop.models.torch.TorchClassifier`` reshapes back). Annotators see the image itself:
folder pools name the image file (S3 objects are first copied to a local cache, so the
annotation app serves a file the pool named, never a path from a request); Fashion-MNIST
items are 28×28 pixel grids, shown like the digits.

* ``source: images``: ``path`` is a directory or ``s3://bucket/prefix`` (``?endpoint_url=``
  for MinIO/moto; credentials from boto3's chain). Class subfolders (``path/<class>/x.png``,
  torchvision ``ImageFolder`` layout) give the ground truth for evaluation; a flat folder has
  none and needs ``pool.classes``.
* ``source: fashion_mnist``: Debian's ``dataset-fashion-mnist`` idx files
  (``/usr/share/datasets/fashion-mnist`` or ``path``) read by torchvision's ``FashionMNIST``
  with ``download=False``; the files are laid out (decompressed) in the cache, never fetched.

The cache is ``$CROWDLOOP_CACHE_DIR`` or ``~/.cache/crowdloop``; files are written to a temporary
name and renamed, so a killed process never leaves a half-written image behind.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from crowdloop.config import PoolConfig
from crowdloop.errors import PoolError, StoreError
from crowdloop.models.datasets import Pool, _finish

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def cache_dir() -> Path:
    """Where downloaded images and the Fashion-MNIST layout live (outside any project)."""
    base = os.environ.get("CROWDLOOP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "crowdloop")
    return Path(base)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _subset(n: int, max_items: int | None) -> np.ndarray:
    """A fixed random subset (seed 0, sorted), so every run of a config sees the same items."""
    if max_items is None or max_items >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=max_items, replace=False))


# Pillow's own decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS): above it, an image is refused
# before decoding. A 194 KB PNG of 40,000 x 40,000 pixels took 8.3 GB and 24 s to load; 80,000 x
# 80,000 would take more memory than the machine has.
MAX_IMAGE_PIXELS = 89_478_485


def check_dimensions(path: str | Path) -> None:
    """Refuse an image whose header promises more than :data:`MAX_IMAGE_PIXELS`, before decoding it.
    Only the header is read (Pillow opens lazily); a file Pillow cannot identify is left to the decoder."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except Image.DecompressionBombError:  # more than twice Pillow's limit: it will not even say the size
        width = height = None
    except (UnidentifiedImageError, OSError, ValueError):
        return
    if width is None or height is None or width * height > MAX_IMAGE_PIXELS:
        size = f"over {2 * MAX_IMAGE_PIXELS:,} pixels" if width is None else f"{width:,} x {height:,} pixels"
        raise PoolError(f"pool.path: image {str(path)!r} is {size}; expected at most {MAX_IMAGE_PIXELS:,} pixels "
                        "(Pillow's decompression-bomb limit): downscale it or leave it out")


def decode(path: str | Path, *, mode: str = "rgb", size: int | None = None) -> np.ndarray:
    """One image file as a (C, H, W) uint8 array: torchvision's decoder, then a square resize."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    check_dimensions(path)
    with warnings.catch_warnings():  # torchvision 0.29 marks its decoders deprecated in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            # upright as a browser shows it to annotators (phone photos: the EXIF orientation tag), so
            # the model learns from the picture people labeled, not the sensor's sideways one
            # GIF and WebP decoders give RGB whatever mode asks (WebP warns on stderr for each
            # image): read them as RGB, made gray below
            gray = mode == "gray" and not str(path).lower().endswith((".gif", ".webp"))
            img = decode_image(str(path), mode=ImageReadMode.GRAY if gray else ImageReadMode.RGB,
                               apply_exif_orientation=True)
        except (RuntimeError, ValueError, OSError) as exc:
            raise PoolError(f"pool.path: cannot decode image {str(path)!r}: {str(exc).splitlines()[0]}") from None
    if img.ndim == 4:  # an animated GIF decodes to all its frames: its first is the picture (a static view's)
        img = img[0]
    channels = 1 if mode == "gray" else 3
    if img.shape[0] != channels:  # the GIF decoder gives RGB whatever mode asked for
        from torchvision.transforms.v2 import functional as TF

        img = TF.rgb_to_grayscale(img[:3]) if channels == 1 else img[:1].expand(3, -1, -1).contiguous()
    if img.dtype != torch.uint8:  # 16-bit PNGs
        img = (img.to(torch.float32) / 257.0).round().to(torch.uint8)
    if size is not None and tuple(img.shape[1:]) != (size, size):
        from torchvision.transforms.v2 import functional as TF

        img = TF.resize(img, [size, size], antialias=True)
    return img.numpy()


def _scan_local(root: Path) -> tuple[list[str], list[str | None]]:
    """Relative image paths and their class folder (None for a flat folder).

    Class folders (``ImageFolder`` layout: ``root/<class>/**/x.png``) may be links to folders
    elsewhere; hidden files and loops are handled as ``models/folders.py`` says."""
    from crowdloop.models.folders import list_files

    if not root.is_dir():
        raise PoolError(f"pool.path: directory {str(root)!r} not found")
    rel = [p.relative_to(root).as_posix() for p in list_files(root) if p.suffix.lower() in IMAGE_SUFFIXES]
    nested = [r for r in rel if "/" in r]
    if not nested:
        return rel, [None] * len(rel)
    flat = [r for r in rel if "/" not in r]
    if flat:
        raise PoolError(f"pool.path: {str(root / flat[0])!r} sits beside class folders such as "
                        f"{nested[0].split('/', 1)[0]!r}; move it into its class folder (or every image out of them)")
    return rel, [r.split("/", 1)[0] for r in rel]


def _fetch_s3(url: str, max_items: int | None) -> tuple[Path, list[str], list[str | None]]:
    """Copy the images under an S3 prefix (through the Store abstraction) into the cache."""
    from crowdloop.storage import open_store

    try:
        store = open_store(url, create=False)
        keys = sorted(k for k in store.list("") if k.lower().endswith(IMAGE_SUFFIXES)
                      and not any(part.startswith(".") for part in k.split("/")))  # as a local folder's
    except StoreError as exc:
        raise PoolError(f"pool.path: cannot list images under {url!r}: {exc}") from None
    nested = [k for k in keys if "/" in k]
    if nested and len(nested) != len(keys):
        raise PoolError(f"pool.path: {url!r} mixes images at the top level and in class folders; expected one layout")
    if any(k.count("/") > 1 for k in keys):
        raise PoolError(f"pool.path: {url!r} has nested folders; expected <prefix>/<class>/<image> or a flat prefix")
    keys = [keys[i] for i in _subset(len(keys), max_items)]
    root = cache_dir() / "s3" / hashlib.sha256(url.encode()).hexdigest()[:16]
    for key in keys:
        target = root / key
        if not target.is_file():
            try:
                _atomic_write(target, store.read_bytes(key))
            except StoreError as exc:
                raise PoolError(f"pool.path: cannot read {key!r} under {url!r}: {exc}") from None
    labels = [k.split("/", 1)[0] if "/" in k else None for k in keys]
    return root, keys, labels


def available_memory_bytes(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What this process can still allocate: the kernel's ``MemAvailable``, capped by the memory
    limit of its container (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``, minus what
    the group uses), since a container limited to 4 GB on a 64 GB host is killed at 4 GB.
    None where neither says."""
    found: list[int] = []
    try:
        with open(proc / "meminfo") as fh:
            found += [int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass  # not Linux: no figure from here
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit_text = (cgroup / limit_file).read_text().strip()
            usage = int((cgroup / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text.isdigit() and int(limit_text) < 2**60:  # "max" / 2**63-ish: no limit
            found.append(max(0, int(limit_text) - usage))
    return min(found) if found else None


def _check_fits_in_memory(n_images: int, first: np.ndarray, first_name: str) -> None:
    """An image pool holds every image's pixels as float32: 50,000 photos of 1024×768 need 472 GB,
    and the load ran until the kernel killed it, with no word. Refused before the first
    allocation, naming the settings that shrink it."""
    needed = n_images * first.size * 4
    available = available_memory_bytes()
    if available is not None and needed > available:
        channels, height, width = first.shape
        raise PoolError(f"pool.image_size: {n_images:,} images of {width}×{height}×{channels} (as {first_name!r}) need "
                        f"{needed / 1e9:.1f} GB as float32 pixels and this machine has {available / 1e9:.1f} GB "
                        "available; set pool.image_size (e.g. 64) or pool.max_items, or use image_mode: gray")


def load_image_pool(cfg: PoolConfig) -> Pool:
    """A folder of images (local directory or S3 prefix); see the module docstring."""
    path = str(cfg.path or "")
    if path.startswith("s3://"):
        root, rel, labels = _fetch_s3(path, cfg.max_items)
    else:
        root = Path(path)
        rel, labels = _scan_local(root)
        keep = _subset(len(rel), cfg.max_items)
        rel, labels = [rel[i] for i in keep], [labels[i] for i in keep]
    if not rel:
        raise PoolError(f"pool.path: no {'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)} images under {path!r}")
    files = [str((root / r).resolve()) for r in rel]
    first = decode(files[0], mode=cfg.image_mode, size=cfg.image_size)
    _check_fits_in_memory(len(files), first, rel[0])
    X = np.empty((len(files), first.size), dtype=np.float32)
    X[0] = first.reshape(-1)
    for i, f in enumerate(files[1:], start=1):
        img = decode(f, mode=cfg.image_mode, size=cfg.image_size)
        if img.shape != first.shape:
            raise PoolError(f"pool.image_size: image {rel[i]!r} is {img.shape[2]}×{img.shape[1]} but {rel[0]!r} is "
                            f"{first.shape[2]}×{first.shape[1]}; set image_size to resize all images to one square size")
        X[i] = img.reshape(-1)
    ids = np.array(rel, dtype=object)
    y = None if all(v is None for v in labels) else np.array(labels, dtype=object)
    return _finish(ids, X, y, cfg, (), content_kind="image", content=np.array(files, dtype=object))


def fashion_mnist_root(source: str | Path | None = None) -> Path:
    """A torchvision ``FashionMNIST`` root in the cache, its ``raw/`` files taken from ``source``
    (default: Debian's ``/usr/share/datasets/fashion-mnist``; ``.gz`` files are decompressed)."""
    src = Path(source) if source else FASHION_MNIST_DIR
    root = cache_dir() / "fashion-mnist" / hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:12]
    raw = root / "FashionMNIST" / "raw"
    for name in _FASHION_FILES:
        target = raw / name
        if target.is_file():
            continue
        plain, packed = src / name, src / f"{name}.gz"
        if plain.is_file():
            raw.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
            shutil.copyfile(plain, tmp)
            os.replace(tmp, target)
        elif packed.is_file():
            with gzip.open(packed, "rb") as fh:
                _atomic_write(target, fh.read())
        else:
            raise PoolError(f"pool.path: {name}[.gz] not found in {str(src)!r}; install Debian's dataset-fashion-mnist "
                            "(apt-get install dataset-fashion-mnist) or point pool.path at the idx files")
    return root


def load_fashion_mnist_pool(cfg: PoolConfig) -> Pool:
    """Fashion-MNIST through torchvision's reader (``download=False``): 28×28 grayscale pixels."""
    from torchvision.datasets import FashionMNIST

    root = fashion_mnist_root(cfg.path)
    parts = []
    for train in ([True] if cfg.split == "train" else [False] if cfg.split == "test" else [True, False]):
        try:
            ds = FashionMNIST(str(root), train=train, download=False)
        except RuntimeError as exc:
            raise PoolError(f"pool.path: cannot read Fashion-MNIST from {str(root)!r}: {str(exc).splitlines()[0]}") from None
        prefix = "train" if train else "test"
        parts.append((prefix, ds.data.numpy(), ds.targets.numpy()))
    ids = np.array([f"fmnist-{p}-{i:05d}" for p, data, _ in parts for i in range(len(data))], dtype=object)
    X = np.concatenate([data.reshape(len(data), -1) for _, data, _ in parts]).astype(np.float32)
    codes = np.concatenate([t for _, _, t in parts])
    keep = _subset(len(ids), cfg.max_items)
    y = np.array([FASHION_MNIST_CLASSES[c] for c in codes[keep]], dtype=object)
    if cfg.classes is None:  # keep the official class order rather than the alphabetical one
        cfg = cfg.model_copy(update={"classes": list(FASHION_MNIST_CLASSES)})
    return _finish(ids[keep], X[keep], y, cfg, (), content_kind="pixels")
