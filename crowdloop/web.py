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
  read, and a body without one is read only up to the limit;
* a personal link's token is shown once; only its hash is kept, one record per person
  (``PersonalLinks``), compared in constant time.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import struct
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from crowdloop.errors import CrowdloopError, RecordExistsError
from crowdloop.storage import Store, read_json, write_json

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
MAX_FORM_BYTES = 4096
PERSON_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
MAX_TOKEN_CHARS = 200


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


def too_large_response(html: str) -> Response:
    response = security_headers(HTMLResponse(html, status_code=413))
    response.headers["Connection"] = "close"  # the unread rest of the body is never read
    return response


async def checked_form(request: Request, token: str | None, *, forbidden: Response,
                       too_large: str) -> dict[str, str] | Response:
    """The form a signed-in person posted from this site (``token``: their cookie's, None when it
    opens nothing), else the response refusing it: ``forbidden`` for a foreign or forged post, 413
    (page ``too_large``) for a form beyond ``MAX_FORM_BYTES``."""
    if token is None or not same_site(request):
        return forbidden
    try:
        form = await read_form(request)
    except TooLarge:
        return too_large_response(too_large)
    # bytes: compare_digest raises TypeError on non-ASCII str, which a forged form may carry
    if form is None or not hmac.compare_digest(form.get("csrf", "").encode(), csrf_for(token).encode()):
        return forbidden
    return form


@dataclass(frozen=True)
class PersonalLinks:
    """The people who open a page by a personal link (annotators of the local app, reviewers of
    the review desk): one record per person under ``prefix`` with a hash of their token."""

    store: Store
    prefix: str  # "annotators/", "reviewers/"
    role: str  # how errors name them: "annotator", "reviewer"

    def issue(self, name: str, *, now: datetime) -> str:
        """Create ``name`` and return their token (shown once; only its hash is stored)."""
        if not PERSON_NAME.match(name):
            raise CrowdloopError(f"{self.role} name {name!r}: expected 1-40 lowercase letters, digits, '_' or '-'")
        token = secrets.token_urlsafe(24)
        try:
            write_json(self.store, f"{self.prefix}{name}.json",
                       {"name": name, "token_sha256": token_hash(token), "created_at": now.isoformat()}, create_only=True)
        except RecordExistsError:
            raise CrowdloopError(f"{self.role} {name!r} already exists; remove it first to issue a new link") from None
        return token

    def revoke(self, name: str) -> None:
        """Delete ``name``'s record: their link opens nothing from now on."""
        if not PERSON_NAME.match(name) or not self.store.exists(f"{self.prefix}{name}.json"):
            raise CrowdloopError(f"{self.role} {name!r}: not found; known: {', '.join(self.names()) or 'none'}")
        self.store.delete(f"{self.prefix}{name}.json")

    def names(self) -> list[str]:
        return sorted(k[len(self.prefix):-len(".json")] for k in self.store.list(self.prefix) if k.endswith(".json"))

    def holder(self, token: str | None) -> str | None:
        """The person holding ``token``, or None (constant-time comparison of hashes)."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        digest = token_hash(token)
        found = None
        for key in self.store.list(self.prefix):
            record = read_json(self.store, key, default=None)
            if record and hmac.compare_digest(str(record.get("token_sha256", "")), digest):
                found = str(record["name"])
        return found


@functools.lru_cache(maxsize=1 << 16)  # a page asks for every item's digest on every view
def item_key(item_id: str) -> str:
    """Item ids may hold any character; store keys and URLs use a digest."""
    return hashlib.sha256(item_id.encode()).hexdigest()[:16]


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
