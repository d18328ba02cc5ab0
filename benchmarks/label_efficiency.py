"""Label-efficiency benchmark: human labels needed to reach 95/98/99 % of full-data accuracy.

Every strategy (crowdloop's samplers, modAL's functions, scikit-activeml's query strategies,
small-text's query strategies on the ``fortunes`` text set) sees the same split, model, initial
set, batch size and seeds. Output: a JSON list of
``{dataset, strategy, seed, labels_to: {"0.95": n, "0.98": n, "0.99": n}, aulc,
query_seconds}`` (``null`` where a level is not reached), plus the learning curve.

    python benchmarks/label_efficiency.py --datasets digits --seeds 5 --out results.json
    python benchmarks/label_efficiency.py --datasets digits wine --strategies crowdloop:best modal:margin_sampling

Needs the ``bench`` extra (scikit-activeml, small-text) for ``skal:`` and ``smalltext:`` peers,
the Debian package ``dataset-fashion-mnist`` for ``fashion_mnist`` and ``fortunes`` for
``fortunes`` (TF-IDF features, a linear model for everyone).
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LEVELS = ("0.95", "0.98", "0.99")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# Six fortunes categories with 200-1,200 items each (3,808 texts after dropping cross-category repeats).
FORTUNE_CATEGORIES = ["definitions", "linux", "politics", "science", "songs-poems", "startrek"]


@dataclass
class Setting:
    """One benchmark set: data, model constructor and loop sizes."""

    X_pool: np.ndarray
    y_pool: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    initial: int
    batch: int
    budget: int
    # Text sets: the pool's rows with their dense view (crowdloop.models.text.TextRows) for
    # crowdloop's samplers and label spreading, and the view itself (features -> dense) for
    # small-text's embedding strategies. X_pool/X_test are the TF-IDF CSR matrices everyone fits on.
    X_rows: Any = None
    dense_view: Any = None


# -- datasets ---------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_dataset(name: str, seed: int, fashion_pool: int = 10000) -> Setting:
    """The split depends on ``seed`` only, so every strategy sees the same one."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    if name in ("digits", "breast_cancer", "wine"):
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        budget = {"digits": 800, "breast_cancer": 250, "wine": 80}[name]
        initial, batch = (20, 10) if name != "wine" else (10, 5)
        Xp, Xt, yp, yt = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
        return Setting(Xp, yp, Xt, yt, initial, batch, budget)
    if name == "synthetic":
        X, y = datasets.make_classification(n_samples=20000, n_features=40, n_informative=20, n_redundant=10,
                                            n_classes=10, n_clusters_per_class=1, class_sep=2.0, flip_y=0.02,
                                            random_state=0)
        Xp, Xt, yp, yt = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
        budget = int(os.environ.get("BENCH_SYNTHETIC_BUDGET", "3000"))
        return Setting(Xp, yp, Xt, yt, 20, int(os.environ.get("BENCH_SYNTHETIC_BATCH", "10")), budget)
    if name == "fashion_mnist":
        from sklearn.decomposition import PCA

        Xtr = _read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz").reshape(60000, -1).astype(np.float32) / 255
        ytr = _read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz").astype(np.int64)
        Xte = _read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz").reshape(10000, -1).astype(np.float32) / 255
        yte = _read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
        rng = np.random.default_rng(seed)
        pool = rng.choice(60000, size=fashion_pool, replace=False)
        test = rng.choice(10000, size=2000, replace=False)
        pca = PCA(n_components=50, random_state=0).fit(Xtr[pool])
        budget = int(os.environ.get("BENCH_FASHION_BUDGET", "1000"))
        return Setting(pca.transform(Xtr[pool]), ytr[pool], pca.transform(Xte[test]), yte[test], 20,
                       int(os.environ.get("BENCH_FASHION_BATCH", "10")), budget)
    if name == "fortunes":
        from crowdloop.config import FeaturesConfig, PoolConfig
        from crowdloop.models.text import TextRows, fit_text_features
        from crowdloop.models.text_pools import load_fortunes_pool

        pool = load_fortunes_pool(PoolConfig(source="fortunes", classes=FORTUNE_CATEGORIES))
        texts, y = pool.content, pool.y.astype(str)
        tp, tt, yp, yt = train_test_split(texts, y, test_size=0.25, stratify=y, random_state=seed)
        fitted = fit_text_features(tp.tolist(), FeaturesConfig(kind="tfidf"))  # fitted on the pool only
        budget = int(os.environ.get("BENCH_FORTUNES_BUDGET", "2000"))
        return Setting(fitted.matrix, yp, fitted.transform(tt.tolist()).tocsr(), yt, 20,
                       int(os.environ.get("BENCH_FORTUNES_BATCH", "20")), budget, X_rows=TextRows(fitted),
                       dense_view=fitted.project)
    if name in PUBLIC:
        X, y, (initial, batch, budget) = PUBLIC[name]()
        Xp, Xt, yp, yt = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
        return Setting(Xp, yp, Xt, yt, initial, batch, budget)
    raise SystemExit(f"--datasets: unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


# -- sets nobody tuned for (issue 18): shipped by packages on the index, or synthetic with noise and imbalance --


def _penguins() -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """palmerpenguins: species (3, 44/36/20 %) from bill, flipper, mass, island, sex; rows with gaps dropped."""
    import pandas as pd
    from palmerpenguins import load_penguins

    df = load_penguins().dropna()
    X = pd.get_dummies(df.drop(columns=["species"]), columns=["island", "sex"], dtype=float).to_numpy(dtype=float)
    return X, pd.factorize(df["species"], sort=True)[0], (10, 5, 120)


def _anes96() -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """statsmodels anes96: party identification (7 classes, 4–21 %) of 944 US voters in 1996 — real, noisy."""
    import statsmodels.api as sm

    df = sm.datasets.anes96.load_pandas().data
    return df.drop(columns=["PID"]).to_numpy(dtype=float), df["PID"].to_numpy(dtype=np.int64), (20, 10, 500)


def _modechoice() -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """statsmodels modechoice: travel mode chosen (air/train/bus/car) by 210 travellers, from each
    mode's times and costs (one row per traveller, 4×4 mode attributes + income + party size)."""
    import statsmodels.api as sm

    df = sm.datasets.modechoice.load_pandas().data
    wide = df.pivot(index="individual", columns="mode", values=["ttme", "invc", "invt", "gc"])
    first = df.groupby("individual")[["hinc", "psize"]].first()
    chosen = df[df["choice"] == 1].set_index("individual")["mode"]
    X = np.hstack([wide.to_numpy(dtype=float), first.loc[wide.index].to_numpy(dtype=float)])
    return X, (chosen.loc[wide.index].to_numpy() - 1).astype(np.int64), (10, 5, 120)


def _noisy_imbalanced() -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """4 classes with one at ≈ 83 % of labels, 15 % of labels replaced at random (≈ 11 % wrong)."""
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=4000, n_features=20, n_informative=8, n_redundant=4, n_classes=4,
                               n_clusters_per_class=2, weights=[0.93, 0.03, 0.02, 0.02], class_sep=1.5, flip_y=0.15,
                               random_state=18)
    return X, y, (20, 10, 600)


def _noisy() -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """5 balanced classes, 30 % of labels replaced at random (≈ 24 % wrong): uncertainty chases noise here."""
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=4000, n_features=20, n_informative=10, n_redundant=4, n_classes=5,
                               n_clusters_per_class=2, class_sep=1.2, flip_y=0.3, random_state=18)
    return X, y, (20, 10, 600)


PUBLIC: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, tuple[int, int, int]]]] = {
    "penguins": _penguins, "anes96": _anes96, "modechoice": _modechoice,
    "noisy_imbalanced": _noisy_imbalanced, "noisy": _noisy,
}
DATASETS = ("digits", "breast_cancer", "wine", "synthetic", "fashion_mnist", "fortunes", *PUBLIC)


def make_model(dataset: str = ""):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if dataset == "fortunes":  # TF-IDF rows are unit length and sparse: no scaler (crowdloop's text model)
        from crowdloop.models.text import TextClassifier

        return TextClassifier(text_estimator())
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def text_estimator():
    """The linear model every strategy uses on TF-IDF (newton-cg: same optimum as lbfgs, 50x faster here)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=10, solver="newton-cg", max_iter=1000)


def _stack(A: Any, B: Any) -> Any:
    import scipy.sparse as sp

    return sp.vstack([A, B]).tocsr() if sp.issparse(A) else np.vstack([A, B])


# -- strategies -------------------------------------------------------------------------
# A query function: (model, X_pool, labeled_mask, y_pool_known, batch, rng) -> pool indices.
Query = Callable[[Any, np.ndarray, np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]


def crowdloop_query(name: str, params: dict[str, Any] | None = None) -> Query:
    from crowdloop import registry

    sampler = registry.samplers.load(name)
    accepts = inspect.signature(sampler).parameters

    def query(model, X, labeled, y, batch, rng):
        cand = np.flatnonzero(~labeled)
        kw = dict(params or {})
        if "X_labeled" in accepts:
            kw["X_labeled"] = X[labeled]
        if "y_labeled" in accepts:
            kw["y_labeled"] = y[labeled]
        return cand[sampler(model, X[cand], batch_size=batch, rng=rng, **kw)]

    return query


class _ModalShim:
    """What modAL's query functions read from an ActiveLearner: predict_proba, X_training."""

    on_transformed = False

    def __init__(self, model, X_training):
        self.model, self.X_training = model, X_training

    def predict_proba(self, X, **kw):
        return self.model.predict_proba(X, **kw)


def modal_query(fn_name: str) -> Query:
    import modAL.batch
    import modAL.uncertainty

    fn = getattr(modAL.uncertainty, fn_name, None) or getattr(modAL.batch, fn_name)

    def query(model, X, labeled, y, batch, rng):
        cand = np.flatnonzero(~labeled)
        out = fn(_ModalShim(model, X[labeled]), X[cand], n_instances=batch)
        idx = out[0] if isinstance(out, tuple) else out
        return cand[np.asarray(idx, dtype=np.int64)]

    return query


def skal_query(spec: str) -> Query:
    import skactiveml.pool as pool
    from skactiveml.classifier import SklearnClassifier
    from sklearn.base import clone

    cls_name, _, method = spec.partition(".")
    cls = getattr(pool, cls_name)

    def query(model, X, labeled, y, batch, rng):
        seed = int(rng.integers(2**31 - 1))
        kwargs = {"random_state": seed}
        if method:
            kwargs["method"] = method
        qs = cls(**kwargs)
        if hasattr(X, "toarray"):  # skactiveml's input validation refuses sparse matrices: densify (text sets)
            X = X.toarray()
        classes, codes = np.unique(y, return_inverse=True)  # skactiveml wants numbers (NaN = unlabeled)
        y_sk = np.full(X.shape[0], np.nan)
        y_sk[labeled] = codes[labeled]
        clf = SklearnClassifier(clone(model), classes=np.arange(len(classes)), random_state=seed)
        clf.estimator_ = model  # reuse the already fitted model: same one every strategy sees
        clf.fit(X[labeled], codes[labeled])
        params = inspect.signature(qs.query).parameters
        kw: dict[str, Any] = {"batch_size": batch}
        for name in ("clf", "estimator"):
            if name in params:
                kw[name] = clf
        for name in ("fit_clf", "fit_estimator"):
            if name in params:
                kw[name] = False
        return np.asarray(qs.query(X, y_sk, **kw), dtype=np.int64)

    return query


def smalltext_query(name: str, dense_view: Any) -> Query:
    """small-text 1.4.1's own loop per query: ``PoolBasedActiveLearner`` over an ``SklearnDataset``
    of the pool, ``initialize_data`` with the labeled set (small-text fits its classifier, a clone
    of the same linear model on the same rows), then ``query``. The embedding strategies
    (``EmbeddingKMeans``, ``ContrastiveActiveLearning``) call ``clf.embed``, which small-text's
    scikit-learn adapter lacks; it gets the same dense view crowdloop's samplers use (the
    TF-IDF's TruncatedSVD, rows of unit length) and, for CAL, the class probabilities."""
    import small_text
    from small_text import PoolBasedActiveLearner, SklearnClassifier, SklearnClassifierFactory
    from small_text.data import SklearnDataset

    class EmbeddingSklearnClassifier(SklearnClassifier):
        def embed(self, dataset, return_proba=False, pbar=None, **_):
            emb = np.asarray(dense_view(dataset.x))
            return (emb, self.predict_proba(dataset)) if return_proba else emb

    class Factory(SklearnClassifierFactory):
        def new(self):
            from sklearn.base import clone

            return EmbeddingSklearnClassifier(clone(self.base_estimator), self.num_classes, **self.kwargs)

    def make_strategy():
        if name == "ContrastiveActiveLearning":
            return small_text.ContrastiveActiveLearning(k=10, pbar=None)
        return getattr(small_text, name)()

    def query(model, X, labeled, y, batch, rng):
        classes, codes = np.unique(y, return_inverse=True)
        train = SklearnDataset(X, np.full(X.shape[0], small_text.base.LABEL_UNLABELED))
        learner = PoolBasedActiveLearner(Factory(text_estimator(), len(classes)), make_strategy(), train)
        # EmbeddingKMeans runs scikit-learn's KMeans with no random_state: it draws from NumPy's
        # global generator, seeded here from the run's rng so the peer is reproducible.
        np.random.seed(int(rng.integers(2**31 - 1)))
        learner.initialize_data(np.flatnonzero(labeled), codes[labeled])
        return np.asarray(learner.query(num_samples=batch), dtype=np.int64)

    return query


def strategy(spec: str, setting: Setting | None = None) -> Query:
    lib, _, name = spec.partition(":")
    if lib == "crowdloop":  # crowdloop:<name>?{"param": value} passes sampler parameters
        name, _, raw = name.partition("?")
        return crowdloop_query(name, json.loads(raw) if raw else None)
    if lib == "modal":
        return modal_query(name)
    if lib == "skal":
        return skal_query(name)
    if lib == "smalltext":
        return smalltext_query(name, setting.dense_view if setting is not None else None)
    raise SystemExit(f"--strategies: {spec!r}: expected crowdloop:<name>, modal:<fn>, skal:<class> or smalltext:<Strategy>")


DEFAULT_STRATEGIES = [
    "crowdloop:random", "crowdloop:margin", "crowdloop:entropy", "crowdloop:least_confident",
    "crowdloop:badge", "crowdloop:coreset", "crowdloop:kmeans_margin", "crowdloop:cluster_margin",
    "crowdloop:ranked_batch", "crowdloop:best",
    "modal:margin_sampling", "modal:entropy_sampling", "modal:uncertainty_sampling",
    "modal:uncertainty_batch_sampling",
    "skal:UncertaintySampling.margin_sampling", "skal:UncertaintySampling.entropy",
    "skal:Badge", "skal:CoreSet", "skal:TypiClust", "skal:Clue",
]


# -- the loop ---------------------------------------------------------------------------


def full_accuracy(dataset: str, seed: int) -> float:
    s = load_dataset(dataset, seed)
    return float(make_model(dataset).fit(s.X_pool, s.y_pool).score(s.X_test, s.y_test))


def run_one(dataset: str, spec: str, seed: int) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    s = load_dataset(dataset, seed)
    full = float(make_model(dataset).fit(s.X_pool, s.y_pool).score(s.X_test, s.y_test))
    # "<strategy>+st": self-training experiment; the model also learns from pool rows it predicts with
    # probability >= 0.95 (machine labels, never counted as human labels in the x axis)
    # "<strategy>+ls": machine labels from label spreading over the pool (crowdloop.models.semi, what
    # `semi_supervised.method: label_spreading` does in the loop). `crowdloop:best` is the recommended
    # configuration for true-label pools: the `best` sampler plus label spreading.
    self_train = spec.endswith("+st")
    spread = spec.endswith("+ls") or spec == "crowdloop:best"
    # "crowdloop:auto[?params]": the self-measuring policy (samplers/auto.py) with its history of which arm
    # picked each label, plus label spreading only while the audit says it helps (models.semi.spreading_helps)
    auto = spec.startswith("crowdloop:auto")
    query = None if auto else strategy(spec[:-3] if self_train or spec.endswith("+ls") else spec, s)
    auto_params = json.loads(spec.partition("?")[2] or "{}") if auto else {}
    arm_of: dict[int, str] = {}
    records: list[dict[str, Any]] = []
    # crowdloop's samplers see the text rows with their dense view; peers see the TF-IDF matrix
    X_query = s.X_rows if s.X_rows is not None and spec.startswith("crowdloop:") else s.X_pool
    init_rng = np.random.default_rng([seed, 1])  # same initial set for every strategy
    labeled = np.zeros(s.X_pool.shape[0], dtype=bool)
    # the initial set holds at least two classes so the first model can be fitted
    while True:
        first = init_rng.choice(s.X_pool.shape[0], size=s.initial, replace=False)
        if len(np.unique(s.y_pool[first])) >= 2:
            break
    labeled[first] = True
    arm_of.update({int(i): "random" for i in first})  # a random initial set is the first audit
    rng = np.random.default_rng([seed, 2])
    sizes, accs, seconds = [], [], []
    while True:
        model = make_model(dataset).fit(s.X_pool[labeled], s.y_pool[labeled])
        if self_train:
            rest = np.flatnonzero(~labeled)
            proba = model.predict_proba(s.X_pool[rest])
            sure = proba.max(axis=1) >= 0.95
            if sure.any():
                X_fit = _stack(s.X_pool[labeled], s.X_pool[rest[sure]])
                y_fit = np.concatenate([s.y_pool[labeled], model.classes_[proba[sure].argmax(axis=1)]])
                model = make_model(dataset).fit(X_fit, y_fit)
        use_spread = spread
        if auto:
            from crowdloop.models.semi import spreading_helps

            human = np.flatnonzero(labeled)
            audit = np.flatnonzero([arm_of.get(int(i)) == "random" for i in human])
            use_spread, ls_record = spreading_helps(make_model(dataset), s.X_pool, human, s.y_pool[human], audit,
                                                    rng=np.random.default_rng([seed, 4, int(labeled.sum())]))
            records.append({"labels": int(labeled.sum()), "label_spreading": use_spread, "spread_evidence": ls_record})
        if use_spread:
            from crowdloop.models.semi import spread_labels

            human = np.flatnonzero(labeled)
            found = spread_labels(s.X_rows if s.X_rows is not None else s.X_pool, human, s.y_pool[human],
                                  rng=np.random.default_rng([seed, 3]))
            if len(found.index):
                X_fit = _stack(s.X_pool[human], s.X_pool[found.index])
                y_fit = np.concatenate([s.y_pool[human], found.labels.astype(s.y_pool.dtype)])
                model = make_model(dataset).fit(X_fit, y_fit)
        sizes.append(int(labeled.sum()))
        accs.append(float(model.score(s.X_test, s.y_test)))
        if labeled.sum() >= min(s.budget, s.X_pool.shape[0]):
            break
        batch = int(min(s.batch, s.budget - labeled.sum(), (~labeled).sum()))
        start = time.perf_counter()
        if auto:
            from crowdloop.samplers.auto import decide

            human = np.flatnonzero(labeled)
            cand = np.flatnonzero(~labeled)
            decision = decide(model, s.X_pool[cand], batch_size=batch, rng=rng, X_labeled=s.X_pool[human],
                              y_labeled=s.y_pool[human], labeled_arm=[arm_of.get(int(i)) for i in human], **auto_params)
            picked = cand[decision.indices]
            for arm, pos in decision.picked_by.items():
                arm_of.update({int(i): arm for i in cand[pos]})
            records[-1].update(decision.record)
        else:
            picked = np.asarray(query(model, X_query, labeled, s.y_pool, batch, rng), dtype=np.int64)
        seconds.append(time.perf_counter() - start)
        if len(np.unique(picked)) != batch or labeled[picked].any():
            raise RuntimeError(f"{spec} returned {len(np.unique(picked))} unique / already-labeled rows")
        labeled[picked] = True
    labels_to = {}
    for level in LEVELS:
        hit = [n for n, a in zip(sizes, accs, strict=True) if a >= float(level) * full]
        labels_to[level] = hit[0] if hit else None
    x = np.asarray(sizes, dtype=float)
    aulc = float(np.trapezoid(accs, x) / (x[-1] - x[0])) if len(x) > 1 else accs[0]
    return {"dataset": dataset, "strategy": spec, "seed": seed, "labels_to": labels_to, "aulc": round(aulc, 4),
            "query_seconds": round(float(np.mean(seconds)) if seconds else 0.0, 5),
            "full_accuracy": round(full, 4), "curve": {"labels": sizes, "accuracy": [round(a, 4) for a in accs]},
            **({"policy": records} if auto else {})}


def _run(args: tuple[str, str, int]) -> dict[str, Any]:
    try:
        return run_one(*args)
    except Exception as exc:  # noqa: BLE001 - one broken peer must not stop the others
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "breast_cancer", "wine", "synthetic", "fashion_mnist"])
    ap.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--out", type=Path, default=Path("results.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    jobs = [(d, s, seed) for d in args.datasets for seed in range(args.seeds) for s in args.strategies]
    results: list[dict[str, Any]] = []
    if args.out.exists():  # resume: keep finished runs, so a killed benchmark loses nothing
        results = json.loads(args.out.read_text())
    done = {(r["dataset"], r["strategy"], r["seed"]) for r in results}
    todo = [j for j in jobs if j not in done]

    def save():
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.out)

    with ProcessPoolExecutor(max_workers=args.jobs) as ex:
        for job, res in zip(todo, ex.map(_run, todo), strict=True):
            if "error" in res:
                print(f"{job[0]:>13} {job[1]:<42} seed={job[2]} FAILED {res['error']}", flush=True)
                continue
            results.append(res)
            save()
            lt = res["labels_to"]
            print(f"{job[0]:>13} {job[1]:<42} seed={job[2]} to98={lt['0.98']} aulc={res['aulc']:.4f} "
                  f"q={res['query_seconds']:.4f}s", flush=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
