"""Labels out of a project: SageMaker Ground Truth output-manifest style JSON Lines.

``labels.jsonl`` in a project (written by ``crowdloop.report.write_outputs``) holds the
latest aggregated human labels and, with auto-labeling, the machine labels of the latest
model for items no human labeled; each line says which it is.
"""

from __future__ import annotations

import io
import json

from crowdloop.engine.project import Project


def export_labels_manifest(p: Project) -> bytes:
    """Aggregated labels as JSON Lines in SageMaker Ground Truth output-manifest form."""
    rounds = p.rounds()
    after_last = (rounds[-1] + 1) if rounds else 0
    labels = p.human_labels(before_round=after_last)
    if p.config.autolabel.enabled:  # machine labels of the latest model, for items no human labeled
        human = {label.item_id for label in labels}
        labels = labels + [label for label in p.machine_labels(before_round=after_last) if label.item_id not in human]
    class_index = {c: i for i, c in enumerate(p.classes)}
    last_answer: dict[str, str] = {}
    for a in p.annotations():
        stamp = a.submitted_at.isoformat()
        if stamp > last_answer.get(a.item_id, ""):
            last_answer[a.item_id] = stamp
    buf = io.StringIO()
    for label in labels:
        buf.write(json.dumps({
            "source": label.item_id,
            "item-id": label.item_id,
            "label": class_index[label.label],
            "label-metadata": {
                "class-name": label.label, "confidence": label.confidence,
                "human-annotated": "yes" if label.source != "machine" else "no",
                "creation-date": last_answer.get(label.item_id), "type": "groundtruth/text-classification",
                "job-name": f"crowdloop-{p.config.project}",
                "n-annotations": label.n_annotations, "method": label.method, "source": label.source, "round": label.round,
            },
        }) + "\n")
    return buf.getvalue().encode()
