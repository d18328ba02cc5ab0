"""The fake Mechanical Turk (``mturk_fake.FakeMTurk``) as an HTTP server on 127.0.0.1.

A loop process that is SIGKILLed loses an in-process fake; this server lives in the test or
harness process, so MTurk's state (HITs, tokens, assignments, approvals, bonuses) survives
the kill like the real service would. It speaks the JSON 1.1 protocol boto3's real ``mturk``
client sends (``X-Amz-Target: MTurkRequesterServiceV20170117.<Operation>``); point the vendor
at it with ``vendor.params.endpoint_url``. Requests signed with another access key than
``access_key`` are refused as MTurk refuses bad credentials.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.vendors.mturk_fake import FakeMTurk, items_in_question


class FakeMTurkServer:
    """``with FakeMTurkServer(answer=...) as server: server.url``; ``server.fake`` is the state.

    ``crowd``: the workers who take the HITs' slots (``FakeMTurk``'s crowd mode: a worker never
    gets one HIT twice nor any HIT once blocked), answering ``answer(item, worker)``."""

    def __init__(self, *, answer: Callable[[str, Any], str] | None = None, access_key: str = "testing",
                 crowd: list[str] | None = None) -> None:
        self.fake = FakeMTurk(answer=answer, crowd=crowd)
        self.access_key = access_key
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                op = (self.headers.get("X-Amz-Target") or "").rsplit(".", 1)[-1]
                key = re.search(r"Credential=([^/]+)/", self.headers.get("Authorization") or "")
                if key is None or key.group(1) != outer.access_key:
                    status, out = 400, {"__type": "UnrecognizedClientException",
                                        "Message": "The security token included in the request is invalid."}
                else:
                    with outer._lock:
                        outer.fake.calls.append(op)
                        status, out = outer.fake.respond(op, body)
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-amzn-RequestId", f"req-{len(outer.fake.calls)}")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-mturk", daemon=True)

    def __enter__(self) -> FakeMTurkServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the vendor's side of the books ---------------------------------------------------
    def ledger(self) -> dict[str, Any]:
        """What MTurk knows: items per HIT, assignments, approved rewards, bonuses."""
        with self._lock:
            hits = list(self.fake.hits.values())
            items = [item for h in hits for item in items_in_question(h["Question"]) for _ in range(h["MaxAssignments"])]
            assignments = [a for rows in self.fake.assignments.values() for a in rows]
            reward = {h["HITId"]: float(h["Reward"]) for h in hits}
            paid = sum(reward[a["HITId"]] for a in assignments if a["AssignmentStatus"] == "Approved")
            bonuses = sum(float(b["BonusAmount"]) for b in self.fake.bonuses)
            tokens = [h["RequesterAnnotation"] for h in hits]
        return {"item_replicas": sorted(items), "n_hits": len(hits), "duplicate_hits": len(tokens) - len(set(tokens)),
                "assignments": sorted(a["AssignmentId"] for a in assignments), "paid": round(paid, 2),
                "bonuses": round(bonuses, 2)}
