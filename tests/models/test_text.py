"""Text pools and text features: loading (hostile text included), TF-IDF stored with the project,
hashing featurized chunk by chunk, embeddings from a local model folder cached in the store,
and every registered sampler on text rows."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from crowdloop import registry
from crowdloop.config import FeaturesConfig, ModelConfig, PoolConfig
from crowdloop.errors import ConfigError, PoolError
from crowdloop.models.datasets import item_payload, split_pool
from crowdloop.models.sklearn import build_model
from crowdloop.models.text import TextClassifier, TextRows, check_text_setup, features_for, fit_text_features
from crowdloop.models.text_pools import load_fortunes_pool, load_text_folder_pool
from crowdloop.storage.local import LocalStore

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "fortunes"
CATEGORIES = ["computers", "definitions", "politics", "science", "songs-poems", "startrek"]


def sample_pool(**kw):
    return load_fortunes_pool(PoolConfig(source="fortunes", path=str(SAMPLE), classes=CATEGORIES, **kw))


# -- loading ----------------------------------------------------------------------------------------


def test_fortunes_sample_loads_one_class_per_category_file() -> None:
    pool = sample_pool()
    assert pool.classes == tuple(CATEGORIES) and pool.content_kind == "text"
    counts = {c: int((pool.y == c).sum()) for c in CATEGORIES}
    assert all(50 <= n <= 60 for n in counts.values()), counts  # 60 per file, minus cross-category repeats
    assert len(set(pool.ids.tolist())) == len(pool) and pool.ids[0].startswith("computers-")
    assert all(t.strip() and t.strip() != "%" for t in pool.content)
    assert not any("\x08" in t for t in pool.content)
    assert item_payload(pool, 3) == {"kind": "text", "text": pool.content[3]}


def test_installed_fortunes_give_six_categories_of_a_few_hundred() -> None:
    pool = load_fortunes_pool(PoolConfig(source="fortunes"))  # /usr/share/games/fortunes (Debian's fortunes)
    counts = {c: int((pool.y == c).sum()) for c in pool.classes}
    assert len(counts) >= 6 and min(counts.values()) >= 200, counts


def test_fortunes_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match=r"categories \['nope'\] not found .*available: \['computers'"):
        load_fortunes_pool(PoolConfig(source="fortunes", path=str(SAMPLE), classes=["computers", "nope"]))
    with pytest.raises(PoolError, match="not found"):
        load_fortunes_pool(PoolConfig(source="fortunes", path=str(tmp_path / "missing"), classes=["a", "b"]))


def test_a_text_found_in_two_categories_is_dropped_from_both(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("shared\n%\nonly a\n%\nonly a\n%\n")
    (tmp_path / "b").write_text("shared\n%\nonly b\n%\n")
    pool = load_fortunes_pool(PoolConfig(source="fortunes", path=str(tmp_path), classes=["a", "b"]))
    assert sorted(zip(pool.content.tolist(), pool.y.tolist(), strict=True)) == [("only a", "a"), ("only b", "b")]


def _folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = tmp_path / "pool" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path / "pool"


def test_text_folder_with_class_subfolders(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"spam/1.txt": b"win money", "ham/2.txt": b"lunch?", "ham/3.txt": b"see you",
                              ".hidden/x.txt": b"never", "ham/.swp": b"never"})
    pool = load_text_folder_pool(PoolConfig(source="text_folder", path=str(root)))
    assert pool.ids.tolist() == ["ham/2.txt", "ham/3.txt", "spam/1.txt"]
    assert pool.y.tolist() == ["ham", "ham", "spam"] and pool.classes == ("ham", "spam")
    assert pool.content.tolist() == ["lunch?", "see you", "win money"]


def test_text_folder_without_classes_needs_the_class_list(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a.txt": b"one", "b.txt": b"two"})
    with pytest.raises(PoolError, match=r"set pool.classes"):
        load_text_folder_pool(PoolConfig(source="text_folder", path=str(root)))
    pool = load_text_folder_pool(PoolConfig(source="text_folder", path=str(root), classes=["x", "y"]))
    assert pool.y is None and pool.classes == ("x", "y")


def test_an_item_with_nothing_to_show_is_refused_in_one_line(tmp_path: Path) -> None:
    """An empty file, a blank text cell or a missing image path was an item annotators were paid
    to judge with nothing on the page."""
    import pandas as pd

    root = _folder(tmp_path, {"spam/1.txt": b"win money", "ham/2.txt": b" \n\t", "ham/3.txt": b"", "ham/4.txt": b"hi"})
    with pytest.raises(PoolError, match=r"^pool: 2 item\(s\) have no text to show annotators \(first: item 'ham/2.txt'\)"):
        load_text_folder_pool(PoolConfig(source="text_folder", path=str(root)))
    frame = pd.DataFrame({"id": ["t1", "t2", "t3"], "body": ["printer on fire", None, "reset"], "x": [1.0, 2.0, 3.0],
                          "picture": ["a.png", "b.png", None], "team": ["it", "it", "sales"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(PoolError, match=r"^pool: 1 item\(s\) have no text .* \(first: item 't2'\)"):
        registry.pools.load("csv")(PoolConfig(source="csv", path=str(tmp_path / "t.csv"), id_column="id",
                                              text_column="body", label_column="team", feature_columns=["x"]))
    with pytest.raises(PoolError, match=r"^pool: 1 item\(s\) have no image .* \(first: item 't3'\)"):
        registry.pools.load("csv")(PoolConfig(source="csv", path=str(tmp_path / "t.csv"), id_column="id",
                                              image_column="picture", label_column="team", feature_columns=["x"]))


def test_hostile_text_is_kept_as_text_or_refused_in_one_line(tmp_path: Path) -> None:
    script = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    rtl = "price: \u202e1000$\u202c and \u2067isolated\u2069"
    root = _folder(tmp_path, {"a/script.txt": script.encode(), "a/rtl.txt": rtl.encode(),
                              "b/controls.txt": b"bold: B\x08Bo\x08ol\x08ld\x08d, nul\x00, bell\x07, esc\x1b[31m, tab\tend\r\n",
                              "b/bom.txt": "\ufeffhello".encode()})
    pool = load_text_folder_pool(PoolConfig(source="text_folder", path=str(root)))
    texts = dict(zip(pool.ids.tolist(), pool.content.tolist(), strict=True))
    assert texts["a/script.txt"] == script  # markup is content: every vendor shows it escaped
    assert texts["a/rtl.txt"] == rtl  # direction marks too: shown in a direction-isolated box
    assert texts["b/controls.txt"] == "bold: Bold, nul, bell, esc[31m, tab\tend\n"
    assert texts["b/bom.txt"] == "hello"

    bad = _folder(tmp_path / "bad", {"a/ok.txt": b"fine", "a/latin1.txt": "caf\xe9".encode("latin-1")})
    with pytest.raises(PoolError) as info:
        load_text_folder_pool(PoolConfig(source="text_folder", path=str(bad)))
    assert "latin1.txt: not valid UTF-8 at byte 3" in str(info.value) and "\n" not in str(info.value)

    huge = _folder(tmp_path / "huge", {"a/big.txt": b"x" * 1_048_576, "b/ok.txt": b"fine"})
    with pytest.raises(PoolError, match=r"item 'a/big.txt' is 1,048,576 bytes; expected at most 100,000 characters"):
        load_text_folder_pool(PoolConfig(source="text_folder", path=str(huge)))
    many = _folder(tmp_path / "many", {"a/big.txt": "é".encode() * 60_000, "b/ok.txt": b"fine"})  # 120 kB, 60k chars
    assert len(load_text_folder_pool(PoolConfig(source="text_folder", path=str(many))).content[0]) == 60_000
    with pytest.raises(PoolError, match=r"item 'a/big.txt' has 60,000 characters; expected at most 50,000"):
        load_text_folder_pool(PoolConfig(source="text_folder", path=str(many), max_text_chars=50_000))


def test_csv_text_pool_needs_no_numeric_columns(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "tickets.csv"
    pd.DataFrame({"id": ["t1", "t2", "t3", "t4"], "body": ["printer on fire", "reset password", "<b>hi</b>", "x\x00y"],
                  "team": ["it", "it", "sales", "sales"]}).to_csv(path, index=False)
    cfg = PoolConfig(source="csv", path=str(path), id_column="id", text_column="body", label_column="team")
    pool = registry.pools.load("csv")(cfg)
    assert pool.X.shape == (4, 0) and pool.content.tolist() == ["printer on fire", "reset password", "<b>hi</b>", "xy"]
    with pytest.raises(ConfigError, match=r"no numeric feature columns; for raw text set model.features"):
        check_text_setup(pool, ModelConfig())
    featurized = features_for(pool, FeaturesConfig(kind="tfidf", params={"min_df": 1}))
    assert featurized.X.shape[0] == 4 and featurized.X.shape[1] > 4

    path.write_bytes(b"id,body,team\nt1,caf\xe9,it\n")
    with pytest.raises(PoolError, match=r"not valid UTF-8 \(byte b'\\xe9'"):
        registry.pools.load("csv")(cfg)
    path.write_text("id,body,team\nt1," + "y" * 200_001 + ",it\n")
    with pytest.raises(PoolError, match=r"item 't1' has 200,001 characters; expected at most 100,000"):
        registry.pools.load("csv")(cfg)


# -- features ---------------------------------------------------------------------------------------


def test_tfidf_is_fitted_once_and_stored_with_the_project(tmp_path: Path, monkeypatch) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    cfg = FeaturesConfig(kind="tfidf", dense_dim=20)
    store = LocalStore(tmp_path / "project")
    first = features_for(sample_pool(), cfg, store)
    assert store.list("features/") == ["features/tfidf.pkl"]

    def refit(*_a, **_k):
        raise AssertionError("refitted although the project stores its featurizer")

    monkeypatch.setattr(TfidfVectorizer, "fit_transform", refit)
    again = features_for(sample_pool(), cfg, LocalStore(tmp_path / "project"))  # a later process
    assert (first.X.features() != again.X.features()).nnz == 0
    assert np.array_equal(first.X.dense(), again.X.dense())

    with pytest.raises(ConfigError, match=r"differs from .* that the project's stored features"):
        features_for(sample_pool(), FeaturesConfig(kind="tfidf", dense_dim=30), store)
    with pytest.raises(PoolError, match="the texts differ from the 3"):
        features_for(sample_pool(max_items=300), cfg, store)


def test_a_vocabulary_of_one_term_is_refused_in_one_line(tmp_path: Path) -> None:
    """``max_features: 1`` once passed the fit and failed as a traceback in the dense view's SVD."""
    cfg = FeaturesConfig(kind="tfidf", params={"max_features": 1})
    with pytest.raises(ConfigError, match=r"^model.features.params=\{'max_features': 1\}: the TF-IDF vocabulary .* has "
                                          r"1 term\(s\); expected at least 2$"):
        features_for(sample_pool(), cfg, LocalStore(tmp_path / "project"))
    assert LocalStore(tmp_path / "project").list("features/") == []  # nothing stored for a rerun to trip on


@pytest.mark.parametrize("n_features", [1, 99])
def test_fewer_hashed_columns_than_the_dense_view_are_refused_in_one_line(tmp_path: Path, n_features: int) -> None:
    """``n_features: 1`` put every term in one column and ran: nothing to rank or cluster by."""
    cfg = FeaturesConfig(kind="hashing", params={"n_features": n_features})
    with pytest.raises(ConfigError, match=rf"^model.features.params.n_features={n_features}: expected at least "
                                          r"dense_dim \(100\) hashed columns"):
        features_for(sample_pool(), cfg, LocalStore(tmp_path / "project"))
    assert LocalStore(tmp_path / "project").list("features/") == []
    assert features_for(sample_pool(), FeaturesConfig(kind="hashing", params={"n_features": 100})).X.shape[1] == 100


def test_text_rows_are_views_with_sparse_features_and_a_dense_view() -> None:
    pool = features_for(sample_pool(), FeaturesConfig(kind="tfidf", dense_dim=16))
    X = pool.X
    assert isinstance(X, TextRows) and X.shape[0] == len(pool)
    view = X[np.array([5, 1, 7])]
    assert isinstance(view, TextRows) and sp.issparse(view.features())
    assert (view.features() != X.features()[[5, 1, 7]]).nnz == 0
    dense = view.dense()
    assert dense.shape == (3, 16) and np.allclose(np.linalg.norm(dense, axis=1), 1.0)
    assert np.array_equal(X[2:4].dense(), X.dense()[2:4]) and np.array_equal(X[np.arange(len(pool)) == 3].texts, X.texts[[3]])
    with pytest.raises(TypeError, match="refusing to densify"):
        np.asarray(X)
    train, test = split_pool(pool, 0.25, 0)
    model = build_model(ModelConfig(params={"max_iter": 500}, features=FeaturesConfig(kind="tfidf")))
    assert isinstance(model, TextClassifier) and not hasattr(model.estimator, "steps")  # no scaler on TF-IDF
    model.fit(train.X, train.y.astype(str))
    assert model.score(test.X, test.y.astype(str)) > 2.0 / len(pool.classes)  # well above chance (1/6)
    from sklearn.model_selection import cross_val_predict

    proba = cross_val_predict(build_model(ModelConfig(features=FeaturesConfig(kind="tfidf"))), train.X,
                              train.y.astype(str), cv=3, method="predict_proba")
    assert proba.shape == (len(train), len(pool.classes))


def test_hashing_featurizes_chunk_by_chunk_and_streams_like_the_whole_matrix(monkeypatch) -> None:
    from crowdloop.samplers.scoring import stream_top_k
    from crowdloop.samplers.uncertainty import margin_sampling

    cfg = FeaturesConfig(kind="hashing", params={"n_features": 2**12}, dense_dim=32)
    pool = features_for(sample_pool(), cfg)
    labeled = np.arange(0, len(pool), 4)
    model = build_model(ModelConfig(params={"max_iter": 500}, features=cfg)).fit(pool.X[labeled], pool.y[labeled])
    whole = pool.X.features()
    sizes: list[int] = []
    transform = pool.X.fitted.transform
    monkeypatch.setattr(pool.X.fitted, "transform", lambda texts: (sizes.append(len(texts)), transform(texts))[1])
    exclude = np.zeros(len(pool), dtype=bool)
    exclude[labeled] = True
    streamed = stream_top_k(model, pool.X, margin_sampling.proba_score, batch_size=7, rng=np.random.default_rng(1),
                            chunk_size=50, exclude=exclude)
    assert sizes and max(sizes) <= 50  # never the whole pool at once
    in_memory = stream_top_k(model, whole, margin_sampling.proba_score, batch_size=7, rng=np.random.default_rng(1),
                             chunk_size=1000, exclude=exclude)
    assert np.array_equal(streamed, in_memory)
    assert pool.X[:5].dense().shape == (5, 32)


def _tiny_model2vec(folder: Path, vocabulary: list[str]) -> Path:
    from model2vec import StaticModel
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = ["[PAD]", "[UNK]", *vocabulary]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    vectors = np.random.default_rng(0).normal(size=(len(words), 12)).astype(np.float32)
    StaticModel(vectors, tokenizer).save_pretrained(str(folder))
    return folder


def test_embeddings_come_from_a_local_model_and_are_cached_in_the_store(tmp_path: Path, monkeypatch) -> None:
    from model2vec import StaticModel

    pool = sample_pool()
    vocabulary = sorted({w.lower() for t in pool.content for w in t.split() if w.isalpha()})[:500]
    cfg = FeaturesConfig(kind="embedding", model_path=str(_tiny_model2vec(tmp_path / "model", vocabulary)))
    calls: list[int] = []
    encode = StaticModel.encode
    monkeypatch.setattr(StaticModel, "encode", lambda self, texts, **kw: (calls.append(len(texts)), encode(self, texts, **kw))[1])
    store = LocalStore(tmp_path / "project")
    first = features_for(pool, cfg, store)
    assert calls == [len(pool)] and first.X.shape == (len(pool), 12)
    assert [k.rsplit("/", 1)[0] for k in store.list("features/")] == [f"features/embedding/{k.split('/')[2]}"
                                                                        for k in store.list("features/")]
    again = features_for(sample_pool(), cfg, LocalStore(tmp_path / "project"))
    assert calls == [len(pool)]  # every item was embedded once: the second process reads the cache
    assert np.array_equal(first.X.features(), again.X.features())
    model = build_model(ModelConfig(params={"max_iter": 500}, features=cfg))
    assert model.estimator.steps[0][0] == "standardscaler"  # dense embeddings are scaled as asked
    model.fit(first.X[::2], pool.y[::2])
    assert model.predict_proba(first.X[1::2]).shape == (len(first.X[1::2]), len(pool.classes))


def test_a_missing_model_is_one_line_naming_the_path_and_how_to_get_it(tmp_path: Path) -> None:
    cfg = FeaturesConfig(kind="embedding", model_path=str(tmp_path / "no-model"))
    with pytest.raises(ConfigError) as info:
        features_for(sample_pool(), cfg)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "no-model") in message
    assert "never downloads" in message and "save_pretrained" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds neither a sentence-transformers model"):
        features_for(sample_pool(), FeaturesConfig(kind="embedding", model_path=str(tmp_path / "empty")))


def test_features_need_a_text_pool() -> None:
    digits = registry.pools.load("sklearn")(PoolConfig(name="iris"))
    with pytest.raises(ConfigError, match="needs a text pool"):
        features_for(digits, FeaturesConfig(kind="tfidf"))
    with pytest.raises(ValueError, match="model_path is required"):
        FeaturesConfig(kind="embedding")


# -- samplers on text rows ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tfidf", "hashing"])
def test_every_registered_sampler_picks_from_text_rows(kind: str) -> None:
    """What engine.select does: candidates as a view of the pool, the labeled rows when asked."""
    cfg = FeaturesConfig(kind=kind, params={"n_features": 2**12} if kind == "hashing" else {}, dense_dim=24)
    pool = features_for(sample_pool(), cfg)
    rng = np.random.default_rng(0)
    labeled = np.sort(rng.choice(len(pool), size=60, replace=False))
    candidates = np.setdiff1d(np.arange(len(pool)), labeled)
    model = build_model(ModelConfig(params={"max_iter": 500}, features=cfg)).fit(pool.X[labeled], pool.y[labeled])
    for name in registry.samplers.names():
        sampler = registry.samplers.load(name)
        accepts = inspect.signature(sampler).parameters
        kw = {}
        if "X_labeled" in accepts:
            kw["X_labeled"] = pool.X[labeled]
        if "y_labeled" in accepts:
            kw["y_labeled"] = pool.y[labeled]
        if name != "random":
            kw["chunk_size"] = 64
        picked = np.asarray(sampler(model, pool.X.take_view(candidates), batch_size=12, rng=np.random.default_rng(3), **kw))
        assert len(np.unique(picked)) == 12 and picked.min() >= 0 and picked.max() < len(candidates), name
    for cold in ("kmeans", "typiclust"):  # round 0: no model yet, the dense view alone
        from crowdloop.samplers.uncertainty import kmeans_cold_start

        picked = (kmeans_cold_start(pool.X, batch_size=10, rng=np.random.default_rng(0)) if cold == "kmeans"
                  else registry.samplers.load("typiclust")(None, pool.X, batch_size=10, rng=np.random.default_rng(0)))
        assert len(np.unique(picked)) == 10


def test_label_spreading_runs_on_the_dense_view() -> None:
    from crowdloop.models.semi import spread_labels

    pool = features_for(sample_pool(), FeaturesConfig(kind="tfidf", dense_dim=24))
    seeds = np.arange(0, len(pool), 5)
    found = spread_labels(pool.X, seeds, pool.y[seeds], rng=np.random.default_rng(0), min_confidence=0.5)
    assert len(found.index) and not set(found.index) & set(seeds.tolist())
    assert np.mean(found.labels == pool.y[found.index]) > 1.5 / len(pool.classes)


def test_fit_text_features_without_a_store_matches_the_stored_one(tmp_path: Path) -> None:
    texts = sample_pool().content.tolist()
    cfg = FeaturesConfig(kind="tfidf", dense_dim=8)
    a = fit_text_features(texts, cfg)
    b = fit_text_features(texts, cfg, LocalStore(tmp_path / "p"))
    assert (a.matrix != b.matrix).nnz == 0
