"""Step ``select``: pick round ``r``'s batch from items never dispatched before.

Selection depends only on (seed, r, store contents), so a redone selection picks the same
items. The batch holds new items (by the cold-start rule before any model exists, else by the
configured sampler), re-asks of unsure items (adaptive redundancy) and gold questions.
Decomposable samplers (those with a ``proba_score``) can be scored in shards — one Prefect
task each — whose per-shard top-k merge into the same items a single pass would pick.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import numpy as np

from crowdloop import keys, registry
from crowdloop.engine.budget import next_batch_size
from crowdloop.engine.project import STREAM_COLD_START, STREAM_SELECT, Project, write_once
from crowdloop.engine.quality import gold_plan, reask_plan
from crowdloop.errors import CrowdloopError
from crowdloop.storage import read_json


def excluded(p: Project, r: int) -> np.ndarray:
    """Boolean mask over pool rows a sampler must never pick: dispatched before round ``r``, gold,
    seed-labeled, set aside for the accuracy audit (``Project.reserved_items``), or labeled by a
    reviewer's correction.

    Built from the (small) excluded set, so it costs O(dispatched), not a pass over a
    million pool ids.
    """
    mask = np.zeros(len(p.pool), dtype=bool)
    index_of = p.index_of
    taken = p.dispatched_items(before_round=r) | p.reserved_items() | p.reviewed_items()
    rows = [index_of[item] for item in taken if item in index_of]
    mask[np.asarray(rows, dtype=np.int64)] = True
    return mask


def _rows(X: Any, rows: np.ndarray) -> Any:
    """``X[rows]``, but a lazy view for a sharded pool (read only if the sampler reads it)."""
    return X.take_view(rows) if hasattr(X, "take_view") else X[rows]


def _row_range(X: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a pool's features without copying (a view, or a lazy sharded view)."""
    return X.take_view(np.arange(start, stop)) if hasattr(X, "take_view") else X[start:stop]


def _batch_size(p: Project, r: int) -> int:
    """Round ``r``'s batch size; selecting when a stopping rule holds is a caller's bug."""
    size, reason = next_batch_size(p, r)
    if size == 0:
        raise CrowdloopError(f"round {r}: nothing to select ({reason})")
    return size


def shard_count(p: Project, r: int) -> int:
    """Number of shards round ``r``'s selection is scored in (1: not sharded).

    Only samplers with a ``proba_score`` (decomposable top-k) are sharded, and only once a
    model exists; diversity samplers and cold starts see the whole candidate set.
    """
    shards = p.config.scale.shards
    if shards <= 1 or p.load_model(r) is None or p.has(r, keys.SELECTION):
        return 1
    return shards if getattr(registry.samplers.load(p.config.sampler.name), "proba_score", None) else 1


def score_shard(p: Project, r: int, shard: int) -> dict[str, Any]:
    """Top candidates of one contiguous shard of the pool, with scores and tie-break keys."""
    n_shards = p.config.scale.shards
    key = keys.shard_key(r, shard, n_shards)
    done = read_json(p.store, key, default=None)
    if done is not None:
        return done
    from crowdloop.samplers.scoring import stream_top_k

    size = _batch_size(p, r)
    bounds = np.linspace(0, len(p.pool), n_shards + 1).astype(np.int64)  # contiguous row ranges
    start, stop = int(bounds[shard]), int(bounds[shard + 1])
    skip = excluded(p, r)[start:stop]
    model = p.load_model(r)
    score = registry.samplers.load(p.config.sampler.name).proba_score
    rng = np.random.default_rng([p.config.seed, r, STREAM_SELECT, shard])
    result: dict[str, Any] = {"shard": shard, "item_ids": [], "scores": [], "keys": []}
    n_free = int((~skip).sum())
    if n_free:
        picked = stream_top_k(model, _row_range(p.pool.X, start, stop), score, batch_size=min(size, n_free), rng=rng,
                              chunk_size=p.config.sampler.chunk_size, exclude=skip)
        rows = start + picked
        result = {"shard": shard, "item_ids": p.pool.ids[rows].tolist(),
                  "scores": [float(v) for v in score(model.predict_proba(p.pool.X[rows]))],
                  "keys": rng.random(len(rows)).tolist()}
    write_once(p.store, key, result)
    return result


def select(p: Project, r: int) -> dict[str, Any]:
    """Pick round ``r``'s batch; recorded in ``selection.json``."""
    done = p.record(r, keys.SELECTION, default=None)
    if done is not None:
        return done
    p.require(r, keys.METRICS, step="select")
    size, reason = next_batch_size(p, r)
    reasks = reask_plan(p, r) if p.config.consensus.adaptive and r > 0 else []
    if size == 0 and not reasks:
        raise CrowdloopError(f"round {r}: nothing to select ({reason})")
    start = time.perf_counter()
    n_shards = shard_count(p, r) if size else 1
    policy: dict[str, Any] = {}  # only a self-measuring sampler has one, and it is never sharded
    if n_shards > 1:  # merge per-shard top-k (scored in parallel by the flow, or here if missing)
        strategy, policy = p.config.sampler.name, {}
        parts = [score_shard(p, r, s) for s in range(n_shards)]
        rows = [(-sc, k, item) for part in parts
                for item, sc, k in zip(part["item_ids"], part["scores"], part["keys"], strict=True)]
        item_ids = [item for _, _, item in sorted(rows)[:size]]
    else:
        strategy, item_ids, policy = _pick(p, r, size)
    _check_eligible(p, r, strategy, item_ids)
    selection: dict[str, Any] = {
        "round": r,
        "strategy": strategy,
        "item_ids": item_ids,
        "seconds": round(time.perf_counter() - start, 4),
        **policy,  # a self-measuring sampler's picked_by and evidence record (samplers/auto.py)
    }
    if n_shards > 1:
        selection["shards"] = n_shards
    if p.config.consensus.adaptive:
        selection["reask"] = reasks
    if p.config.gold.enabled:
        selection["gold"] = gold_plan(p, r, len(item_ids) + len(reasks))
    write_once(p.store, keys.round_key(r, keys.SELECTION), selection)
    return p.record(r, keys.SELECTION)


def _check_eligible(p: Project, r: int, strategy: str, item_ids: list[str]) -> None:
    """Refuse a batch with an item picked twice or one a sampler must never pick, before it is
    recorded or sent. A wrong exclusion mask (or a sampler that ignores it) would otherwise pay for
    the same items again every round, and a run whose only stop is an exhausted pool would never
    end, since the pool of undispatched items stops shrinking. Checked against the sets
    themselves, not against the mask that should have excluded them."""
    taken = p.dispatched_items(before_round=r) | p.reserved_items() | p.reviewed_items()
    again = sorted(set(item_ids) & taken)
    if again or len(set(item_ids)) != len(item_ids):
        twice = sorted({i for i in item_ids if item_ids.count(i) > 1})
        raise CrowdloopError(
            f"round {r}: selection ({strategy}) picked {len(again)} ineligible item(s) "
            f"(dispatched before round {r}, gold, seed-labeled, corrected or audit reserve: {again[:5]}) and "
            f"{len(twice)} item(s) twice ({twice[:5]}); nothing was recorded or sent")


def arm_history(p: Project, r: int, item_ids: list[str]) -> list[str | None]:
    """Which arm of a self-measuring sampler picked each item, from rounds before ``r``: the
    ``picked_by`` of their selection records; a random cold start counts as ``random`` (an
    unbiased audit); anything else (a k-means cold start, another sampler) as None."""
    arm: dict[str, str] = {}
    for q in range(r):
        sel = p.record(q, keys.SELECTION, default=None)
        if not sel:
            continue
        if sel.get("picked_by"):
            for name, ids in sel["picked_by"].items():
                arm.update(dict.fromkeys(ids, name))
        elif sel.get("strategy") == "cold_start:random":
            arm.update(dict.fromkeys(sel["item_ids"], "random"))
    return [arm.get(i) for i in item_ids]


def _pick(p: Project, r: int, size: int) -> tuple[str, list[str], dict[str, Any]]:
    """``size`` new items by the cold-start rule (no model yet) or the configured sampler, and
    for a self-measuring sampler (one with ``decide``) which arm picked each and why."""
    if size == 0:
        return "re-ask only", [], {}
    model = p.load_model(r)
    strategy = p.config.sampler.name
    score = getattr(registry.samplers.load(strategy), "proba_score", None)
    if model is not None and score is not None and not p.config.sampler.params:
        # Uncertainty samplers stream the whole pool with an exclude mask: no copy of the
        # candidate rows, memory bounded by one chunk (a sharded pool is read shard by shard).
        from crowdloop.samplers.scoring import stream_top_k

        picked = stream_top_k(model, p.pool.X, score, batch_size=size, rng=p.rng(r, STREAM_SELECT),
                              chunk_size=p.config.sampler.chunk_size, exclude=excluded(p, r))
        return strategy, p.pool.ids[picked].tolist(), {}
    candidates = np.flatnonzero(~excluded(p, r)).astype(np.int64)
    policy: dict[str, Any] = {}
    if model is None:
        strategy = f"cold_start:{p.config.sampler.cold_start}"
        rng = p.rng(r, STREAM_COLD_START)
        if p.config.sampler.cold_start == "kmeans":
            from crowdloop.samplers.uncertainty import kmeans_cold_start

            picked = kmeans_cold_start(_rows(p.pool.X, candidates), batch_size=size, rng=rng)
        else:
            rule = "typiclust" if p.config.sampler.cold_start == "typiclust" else "random"
            picked = registry.samplers.load(rule)(None, _rows(p.pool.X, candidates), batch_size=size, rng=rng)
    else:
        sampler = registry.samplers.load(strategy)
        params = dict(p.config.sampler.params)
        if strategy != "random":
            params.setdefault("chunk_size", p.config.sampler.chunk_size)
        accepts = inspect.signature(sampler).parameters  # the labeled set only for samplers that ask for it
        if "X_labeled" in accepts or "y_labeled" in accepts:
            labels = sorted(p.known_labels(before_round=r), key=lambda label: label.item_id)
            if "X_labeled" in accepts:
                params.setdefault("X_labeled", p.pool.X[p.rows_of([label.item_id for label in labels])])
            if "y_labeled" in accepts:
                params.setdefault("y_labeled", np.array([label.label for label in labels], dtype=object))
            if "labeled_arm" in accepts:  # the policy's history: who picked each labeled item
                params.setdefault("labeled_arm", arm_history(p, r, [label.item_id for label in labels]))
        decide = getattr(sampler, "decide", None)
        if decide is not None:
            decision = decide(model, _rows(p.pool.X, candidates), batch_size=size, rng=p.rng(r, STREAM_SELECT), **params)
            picked = np.asarray(decision.indices, dtype=np.int64)
            policy = {"picked_by": {arm: p.pool.ids[candidates[np.asarray(pos, dtype=np.int64)]].tolist()
                                    for arm, pos in decision.picked_by.items()},
                      "policy": decision.record}
        else:
            picked = sampler(model, _rows(p.pool.X, candidates), batch_size=size, rng=p.rng(r, STREAM_SELECT), **params)
    picked = np.asarray(picked, dtype=np.int64)
    if len(picked) != size or len(np.unique(picked)) != size or picked.min() < 0 or picked.max() >= len(candidates):
        raise CrowdloopError(f"sampler {strategy!r} broke its contract: "
                             f"expected {size} unique indices into {len(candidates)} candidates")
    return strategy, p.pool.ids[candidates[picked]].tolist(), policy
