"""What crowdloop's web pages share: their security headers, the same-site and CSRF checks on
posts, a bounded form reader, and item images drawn from pixels.

Both the annotation app (``vendors/local_app.py``) and the review desk
(``crowdloop/review_app.py``) serve people who follow a personal link; the rules below are
written once so neither can drift from the other:

* every response carries a Content-Security-Policy that runs only scripts and styles with the
  response's nonce, never caches, and cannot be framed;
* a post must come from this site: its ``Origin`` (or, without one, its ``Referer``) is ours and
  ``Sec-Fetch-Site`` is same-origin, and its form carries the CSRF value of the cookie's token;
* a form larger than ``MAX_FORM_BYTES`` is refused by its ``Content-Length`` before its body is
  read, and a body without one is read only up to the limit.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import Response

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
MAX_FORM_BYTES = 4096


class TooLarge(Exception):
    """A post body beyond ``MAX_FORM_BYTES``."""


def security_headers(response: Response, nonce: str | None = None) -> Response:
    script = f"'nonce-{nonce}'" if nonce else "'none'"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; img-src 'self'; style-src {script}; script-src {script}; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"  # "no-referrer" would make Chromium send Origin: null
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def same_site(request: Request) -> bool:
    """The request was made by a page of this site (a post from elsewhere is a forgery)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    ours = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is None:  # old browsers send no Origin on same-origin posts; a Referer still tells
        referer = request.headers.get("referer")
        return referer is None or referer == ours or referer.startswith(ours + "/")
    return origin == ours  # "null" (an opaque origin) is never ours


async def read_form(request: Request) -> dict[str, str] | None:
    """The posted form, read at most ``MAX_FORM_BYTES`` deep (``TooLarge`` beyond); None if unreadable."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        raise TooLarge  # refused before a byte of the body is read
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise TooLarge  # no (or a lying) Content-Length: stop reading at the limit
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in parsed.items()}


def csrf_for(token: str) -> str:
    """The CSRF value of a personal token: a page shows it in its forms, a post must carry it."""
    return hashlib.sha256(f"crowdloop-csrf|{token}".encode()).hexdigest()[:32]


def token_hash(token: str) -> str:
    """What is stored of a personal token (the token itself is shown once, never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


def escape(text: str) -> str:
    from markupsafe import escape as markup_escape

    return str(markup_escape(text))


def image_response(payload: dict[str, Any]) -> Response:
    """An image item as its page shows it: its pixels drawn, or the file its pool names (an image
    type only); 404 for anything else. The path comes from the pool, never from the request."""
    if payload.get("kind") != "image":
        return security_headers(Response(status_code=404))
    if "pixels" in payload:
        return security_headers(Response(png_from_pixels(payload["pixels"]), media_type="image/png"))
    path = Path(str(payload.get("path", "")))
    media = IMAGE_TYPES.get(path.suffix.lower())
    if media is None or not path.is_file():
        return security_headers(Response(status_code=404))
    return security_headers(Response(path.read_bytes(), media_type=media))


def png_from_pixels(pixels: list[list[float]], *, scale: int = 1) -> bytes:
    """An 8-bit grayscale PNG (dark ink on white) from a grid of non-negative intensities."""
    rows = [[float(v) for v in row] for row in pixels]
    top = max((max(r) for r in rows if r), default=0.0) or 1.0
    raw = bytearray()
    for row in rows:
        line = bytes(255 - round(255 * min(max(v, 0.0), top) / top) for v in row for _ in range(scale))
        for _ in range(scale):
            raw += b"\x00" + line
    width, height = len(rows[0]) * scale if rows else 0, len(rows) * scale

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")
