"""Text features: a text pool's items become model inputs, the same ones in every round and rerun.

``model.features.kind`` picks the featurizer:

* ``tfidf``: scikit-learn's ``TfidfVectorizer`` fitted once on all the pool's texts (test split
  included: it is unsupervised, so no label leaks) plus a ``TruncatedSVD`` for the dense view;
  both are pickled into the store (``features/tfidf.pkl``, create-only) so every later round,
  rerun and process transforms with the very same vocabulary and weights.
* ``hashing``: ``HashingVectorizer``; nothing to fit, so rows are featurized chunk by chunk as
  they are scored and the pool's feature matrix never exists whole (pools larger than memory).
  The dense view is a sparse random projection that depends only on the seed and column count.
* ``embedding``: a sentence-embedding model from a local folder (sentence-transformers or
  model2vec); nothing is ever downloaded. Each item is embedded once: chunks of embeddings
  are cached in the store under a digest of the model and the chunk's texts.

The pool's ``X`` becomes :class:`TextRows`: indexing gives a view (nothing computed yet),
``features()`` the model inputs (sparse stays sparse), ``dense()`` a dense (n, d) view for the
samplers that measure distances (k-means, core-set, BADGE, TypiClust) and for label spreading,
so no one densifies a TF-IDF matrix. :class:`TextClassifier` wraps the configured estimator so
it accepts these rows and exposes the dense view as ``embed``.

The engine calls :func:`featurized_split` (load, :func:`features_for`, split) once per process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from crowdloop.config import FeaturesConfig, ModelConfig, PoolConfig
from crowdloop.errors import ConfigError, PoolError, RecordExistsError
from crowdloop.rows import dense_rows, feature_rows, is_sparse

FEATURES_PREFIX = "features/"
EMBEDDING_CHUNK = 4096  # items per cached embedding file
TFIDF_DEFAULTS: dict[str, Any] = {"sublinear_tf": True, "min_df": 2, "dtype": np.float32}
HASHING_DEFAULTS: dict[str, Any] = {"n_features": 2**18, "alternate_sign": False, "norm": "l2", "dtype": np.float32}


# -- rows -------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class FittedText:
    """One pool's fitted featurizer: texts → features, features → dense view.

    ``matrix`` holds every item's features when they are computed up front (tfidf, embedding);
    for ``hashing`` it is None and rows are featurized when asked for."""

    kind: str
    texts: np.ndarray  # object array of str: every loaded item, in pool order
    n_features: int
    transform: Callable[[Sequence[str]], Any]  # texts → (n, n_features) sparse or dense
    project: Callable[[Any], np.ndarray]  # features → (n, d) dense, rows of unit length
    matrix: Any = None
    _dense: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def features_of(self, index: np.ndarray) -> Any:
        if self.matrix is not None:
            return self.matrix[index]
        return self.transform(self.texts[index].tolist())

    def dense_of(self, index: np.ndarray, chunk_size: int = 8192) -> np.ndarray:
        if self.matrix is not None:  # computed once per process for the whole pool, then sliced
            if self._dense is None:
                self._dense = np.concatenate([self.project(self.matrix[s:s + chunk_size])
                                              for s in range(0, self.matrix.shape[0], chunk_size)])
            return self._dense[index]
        parts = [self.project(self.features_of(index[s:s + chunk_size])) for s in range(0, len(index), chunk_size)]
        return np.concatenate(parts) if parts else np.empty((0, 0))


class TextRows:
    """Rows ``index`` of a text pool's features, behaving enough like a 2-D array.

    Indexing (int, slice, integer or boolean array) and ``take_view`` give another view and
    compute nothing; ``features()`` gives the model inputs of these rows, ``dense()`` their
    dense view, ``chunks(n)`` streams views of at most ``n`` rows (the streaming top-k scores
    a hashed pool this way, featurizing one chunk at a time). ``np.asarray`` is refused: it
    would densify a sparse matrix of the whole pool without anyone noticing.
    """

    ndim = 2

    def __init__(self, fitted: FittedText, index: np.ndarray | None = None) -> None:
        self.fitted = fitted
        self._index = np.arange(len(fitted.texts), dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self._index), self.fitted.n_features)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, key: Any) -> TextRows:
        if isinstance(key, tuple):  # X[rows, ...] / X[rows, :] (scikit-learn's _safe_indexing) are row indexing
            if len(key) != 2 or not (key[1] is Ellipsis or key[1] == slice(None)):
                raise TypeError("TextRows: index rows only (X[rows]); use .features() or .dense() for columns")
            key = key[0]
        if isinstance(key, (int, np.integer)):
            key = [int(key)]
        return TextRows(self.fitted, self._index[key])

    def take_view(self, index: np.ndarray) -> TextRows:
        return TextRows(self.fitted, self._index[np.asarray(index)])

    def features(self) -> Any:
        """The model inputs of these rows: a SciPy CSR matrix (tfidf, hashing) or a float array."""
        return self.fitted.features_of(self._index)

    def dense(self) -> np.ndarray:
        """A dense (n, d) view for distances, never the whole sparse matrix densified."""
        return self.fitted.dense_of(self._index)

    @property
    def texts(self) -> np.ndarray:
        return self.fitted.texts[self._index]

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, TextRows]]:
        for start in range(0, len(self._index), int(chunk_size)):
            yield start, TextRows(self.fitted, self._index[start:start + int(chunk_size)])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("TextRows: refusing to densify text features; call .features() (sparse) or .dense() "
                        "(the dense view), or wrap the estimator in crowdloop.models.text.TextClassifier")


class TextClassifier(ClassifierMixin, BaseEstimator):
    """The configured estimator, fitted on text rows' features; ``embed`` gives their dense view.

    Accepts :class:`TextRows`, SciPy sparse matrices and arrays alike, so every sampler and
    every engine step can hand it whatever rows it has.
    """

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def fit(self, X: Any, y: Any, **fit_params: Any) -> TextClassifier:
        self.estimator_ = clone(self.estimator).fit(feature_rows(X), y, **fit_params)
        self.classes_ = self.estimator_.classes_
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.estimator_.predict_proba(feature_rows(X))

    def predict(self, X: Any) -> np.ndarray:
        return self.estimator_.predict(feature_rows(X))

    def embed(self, X: Any) -> np.ndarray:
        return dense_rows(X)


def build_text_model(estimator: Any, cfg: ModelConfig) -> TextClassifier:
    """Wrap ``estimator``; dense embeddings are standardized first when ``model.scale`` asks.

    TF-IDF and hashed rows are not: they are unit length already, and standardizing sparse
    columns would blow rare terms up (and a centred matrix is no longer sparse)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if cfg.scale and cfg.features is not None and cfg.features.kind == "embedding":
        estimator = make_pipeline(StandardScaler(), estimator)
    return TextClassifier(estimator)


# -- fitting and loading ------------------------------------------------------------------------------


def texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _unit_rows(A: Any) -> np.ndarray:
    A = np.asarray(A.toarray() if is_sparse(A) else A, dtype=np.float64)
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    return A / np.where(norms > 0, norms, 1.0)


def _vectorizer_params(cfg: FeaturesConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    params = {**defaults, **cfg.params}
    if isinstance(params.get("ngram_range"), list):  # YAML has no tuples
        params["ngram_range"] = tuple(params["ngram_range"])
    return params


def _make(cls: type, params: dict[str, Any]) -> Any:
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"model.features.params: {cls.__name__} rejected {sorted(params)}: {exc}") from None


def _check_record(record: dict[str, Any], cfg: FeaturesConfig, digest: str, key: str, texts: np.ndarray) -> None:
    """The stored featurizer was made with this config on these texts, or on the first of them: a
    csv pool grown by appended rows keeps the featurizer fitted when the project started
    (``crowdloop/engine/pools.py`` accepts only appended rows), so every model sees the same columns."""
    if record.get("config") != cfg.model_dump(mode="json"):
        raise ConfigError(f"model.features: {cfg.model_dump(mode='json')} differs from {record.get('config')} "
                          f"that the project's stored features ({key}) were made with; use a new --project-dir")
    n = record.get("n_items")
    appended = isinstance(n, int) and 0 < n < len(texts) and texts_digest(texts[:n].tolist()) == record.get("texts_sha256")
    if record.get("texts_sha256") != digest and not appended:
        raise PoolError(f"pool: the texts differ from the {record.get('n_items')} texts the project's stored features "
                        f"({key}) were fitted on; a project's pool must not change (use a new --project-dir)")


def _write_create_only(store: Any, key: str, data: bytes) -> bytes:
    """Write ``data`` unless another process got there first; return what the store holds."""
    try:
        store.write_bytes(key, data, create_only=True)
        return data
    except RecordExistsError:
        return store.read_bytes(key)


def _fit_tfidf(texts: np.ndarray, cfg: FeaturesConfig, store: Any, digest: str) -> FittedText:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    key = FEATURES_PREFIX + "tfidf.pkl"
    if store is not None and store.exists(key):
        record = pickle.loads(store.read_bytes(key))
    else:
        vectorizer = _make(TfidfVectorizer, _vectorizer_params(cfg, TFIDF_DEFAULTS))
        try:
            matrix = vectorizer.fit_transform(texts.tolist())
        except ValueError as exc:  # e.g. "empty vocabulary" with min_df above the pool's repeats
            raise ConfigError(f"model.features: TfidfVectorizer could not fit the pool's texts: {exc}") from None
        vectorizer.stop_words_ = None  # only for introspection; can be as large as the vocabulary
        if matrix.shape[1] < 2:  # nothing to rank or cluster by; TruncatedSVD would fail deep in the first round
            raise ConfigError(f"model.features.params={cfg.params}: the TF-IDF vocabulary of the pool's texts has "
                              f"{matrix.shape[1]} term(s); expected at least 2")
        n_components = max(1, min(cfg.dense_dim, matrix.shape[1] - 1, matrix.shape[0] - 1))
        svd = TruncatedSVD(n_components=n_components, random_state=0).fit(matrix)
        record = {"format": 1, "kind": "tfidf", "config": cfg.model_dump(mode="json"), "texts_sha256": digest,
                  "n_items": len(texts), "vectorizer": vectorizer, "svd": svd}
        if store is not None:
            record = pickle.loads(_write_create_only(store, key, pickle.dumps(record)))
    _check_record(record, cfg, digest, key, texts)
    vectorizer, svd = record["vectorizer"], record["svd"]
    matrix = vectorizer.transform(texts.tolist()).tocsr()
    return FittedText("tfidf", texts, matrix.shape[1], vectorizer.transform,
                      lambda M: _unit_rows(svd.transform(M)), matrix=matrix)


def _fit_hashing(texts: np.ndarray, cfg: FeaturesConfig, store: Any, digest: str) -> FittedText:
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.random_projection import SparseRandomProjection

    params = _vectorizer_params(cfg, HASHING_DEFAULTS)
    vectorizer = _make(HashingVectorizer, params)
    n_features = int(params["n_features"])
    if n_features < max(2, cfg.dense_dim):  # every term in a handful of columns: nothing left to rank or cluster by
        raise ConfigError(f"model.features.params.n_features={n_features}: expected at least dense_dim "
                          f"({cfg.dense_dim}) hashed columns (default 2**18 = {HASHING_DEFAULTS['n_features']})")
    key = FEATURES_PREFIX + "hashing.json"
    record = {"format": 1, "kind": "hashing", "config": cfg.model_dump(mode="json"), "texts_sha256": digest,
              "n_items": len(texts)}
    if store is not None:
        record = json.loads(_write_create_only(store, key, json.dumps(record).encode()))
    _check_record(record, cfg, digest, key, texts)
    projection = SparseRandomProjection(n_components=cfg.dense_dim, random_state=0).fit(sp.csr_matrix((1, n_features)))
    return FittedText("hashing", texts, n_features, lambda t: vectorizer.transform(t).tocsr(),
                      lambda M: _unit_rows(projection.transform(M)))


# -- embeddings ---------------------------------------------------------------------------------------

MODEL2VEC_HINT = ("python -c \"from model2vec import StaticModel; StaticModel.from_pretrained('minishlab/potion-base-8M')"
                  ".save_pretrained('{path}')\"")
ST_HINT = ("python -c \"from sentence_transformers import SentenceTransformer; "
           "SentenceTransformer('sentence-transformers/all-MiniLM-L6-v2').save('{path}')\"")


def _backend_of(path: Path, backend: str) -> str:
    if backend != "auto":
        return backend
    # model2vec saves a modules.json too (so sentence-transformers can read it): look at its weights first
    if (path / "config_sentence_transformers.json").is_file():
        return "sentence_transformers"
    if (path / "tokenizer.json").is_file() and (path / "model.safetensors").is_file():
        return "model2vec"
    if (path / "modules.json").is_file():
        return "sentence_transformers"
    raise ConfigError(f"model.features.model_path: {str(path)!r} holds neither a sentence-transformers model "
                      "(modules.json) nor a model2vec model (tokenizer.json + model.safetensors); set "
                      "model.features.backend or point model_path at a saved model")


def embedding_model_folder(cfg: FeaturesConfig) -> Path:
    """The local model folder of an ``embedding`` featurizer, or a one-line error saying how to get one."""
    path = Path(cfg.model_path or "")
    if not path.is_dir():
        raise ConfigError(f"model.features.model_path: model folder {str(path)!r} not found; crowdloop never downloads "
                          f"models at run time: save one there on a machine with network access, e.g. "
                          f"{MODEL2VEC_HINT.format(path=path)}, and copy the folder here")
    return path


def load_embedding_model(cfg: FeaturesConfig) -> tuple[Callable[[list[str]], np.ndarray], str]:
    """(encode, model id) for the local model folder; never downloads anything."""
    path = embedding_model_folder(cfg)
    backend = _backend_of(path, cfg.backend)
    model_id = _model_digest(path, backend)
    params = dict(cfg.params)
    if backend == "model2vec":
        try:
            from model2vec import StaticModel
        except ImportError:
            raise ConfigError("model.features.backend: model2vec is not installed (pip install 'crowdloop[text]')") from None
        model = StaticModel.from_pretrained(str(path))
        return (lambda texts: np.asarray(model.encode(texts, **params), dtype=np.float32)), model_id
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only: never reach for the hub
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("model.features.backend: sentence-transformers is not installed "
                          "(pip install sentence-transformers), or save a model2vec model instead") from None
    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    params.setdefault("batch_size", 64)
    return (lambda texts: np.asarray(model.encode(texts, show_progress_bar=False, **params), dtype=np.float32)), model_id


def _model_digest(path: Path, backend: str) -> str:
    """The model's identity for the cache: its small files' contents and its weight files' sizes."""
    h = hashlib.sha256(backend.encode())
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        h.update(rel.encode() + b"\0")
        size = f.stat().st_size
        h.update(f.read_bytes() if size < 1_000_000 else str(size).encode())
    return h.hexdigest()[:16]


def _fit_embedding(texts: np.ndarray, cfg: FeaturesConfig, store: Any, digest: str) -> FittedText:
    encode, model_id = load_embedding_model(cfg)
    parts = []
    for start in range(0, len(texts), EMBEDDING_CHUNK):
        chunk = texts[start:start + EMBEDDING_CHUNK].tolist()
        key = f"{FEATURES_PREFIX}embedding/{model_id}/{texts_digest(chunk)[:24]}.npy"
        if store is not None and store.exists(key):
            emb = np.load(io.BytesIO(store.read_bytes(key)), allow_pickle=False)
        else:
            emb = np.asarray(encode(chunk), dtype=np.float32)
            if emb.ndim != 2 or len(emb) != len(chunk):
                raise ConfigError(f"model.features.model_path: the model returned shape {emb.shape} for {len(chunk)} "
                                  "texts; expected one vector per text")
            if store is not None:
                buf = io.BytesIO()
                np.save(buf, emb, allow_pickle=False)
                emb = np.load(io.BytesIO(_write_create_only(store, key, buf.getvalue())), allow_pickle=False)
        parts.append(emb)
    matrix = np.concatenate(parts)
    return FittedText("embedding", texts, matrix.shape[1], lambda t: encode(list(t)), _unit_rows, matrix=matrix)


FEATURIZERS = {"tfidf": _fit_tfidf, "hashing": _fit_hashing, "embedding": _fit_embedding}


def fit_text_features(texts: Sequence[str], cfg: FeaturesConfig, store: Any = None) -> FittedText:
    """Fit (or load from ``store``) the featurizer of ``texts``; ``store=None`` keeps it in memory."""
    texts = np.asarray(list(texts), dtype=object)
    return FEATURIZERS[cfg.kind](texts, cfg, store, texts_digest(texts.tolist()))


def features_for(pool: Any, cfg: FeaturesConfig, store: Any = None) -> Any:
    """``pool`` with ``X`` replaced by :class:`TextRows` of its texts (``pool.content``).

    Call once per process on the loaded pool, before the test split, with the project's store:
    the first call fits and stores the featurizer, every later one loads it.
    """
    if pool.content_kind != "text" or pool.content is None:
        raise ConfigError("model.features: needs a text pool (pool.text_column, or pool.source text_folder or "
                          "fortunes); this pool has no texts")
    fitted = fit_text_features(pool.content.tolist(), cfg, store)
    return dataclasses.replace(pool, X=TextRows(fitted), feature_names=())


_SPLITS: dict[tuple, Any] = {}  # (store URL, pool, seed, file stamp, features) -> featurized (pool, test)


def featurized_split(pool_cfg: PoolConfig, seed: int, stamp: Any, cfg: FeaturesConfig, store: Any, *,
                     raw: Any = None, group_copies: bool = False, rows_at_start: int | None = None,
                     appended: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """The engine's text pool: loaded, featurized with the project's stored featurizer, then split
    (``models.datasets.split_pool``); once per process for a project and its baseline twin
    (``stamp`` is the pool file's size and mtime, so a changed file is loaded again). ``raw`` is the
    pool as its loader returned it (a grown folder's in start order, ``appended`` naming the files
    added), when the caller has it already."""
    from crowdloop import registry
    from crowdloop.models.datasets import split_pool

    key = (getattr(store, "url", None), pool_cfg.model_dump_json(), seed, stamp, cfg.model_dump_json(), group_copies,
           rows_at_start, appended)
    if key not in _SPLITS:
        from crowdloop.models.datasets import in_start_order

        loaded = raw if raw is not None else in_start_order(registry.pools.load(pool_cfg.source)(pool_cfg), appended)
        pool = features_for(loaded, cfg, store)
        if len(_SPLITS) >= 4:  # a process serves a handful of projects at most
            _SPLITS.clear()
        _SPLITS[key] = split_pool(pool, pool_cfg.test_size, seed, group_copies=group_copies, rows_at_start=rows_at_start)
    return _SPLITS[key]


def check_text_setup(pool: Any, cfg: ModelConfig) -> None:
    """Fail before round 0 when a pool has no features and no featurizer could give it some."""
    if cfg.features is None and getattr(pool.X, "shape", (0, 1))[1] == 0:
        raise ConfigError("model.features: the pool has no numeric feature columns; for raw text set "
                          "model.features: {kind: tfidf} (or hashing / embedding)")
    if cfg.features is not None and cfg.features.kind == "embedding":
        _backend_of(embedding_model_folder(cfg.features), cfg.features.backend)
