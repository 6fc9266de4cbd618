"""Neuronpedia's export layout for one source (a dictionary at a hook), as its database export
script writes it and its import reads it: ``<source>/features/batch-0.jsonl``,
``<source>/activations/batch-0.jsonl``, ``<source>/explanations/batch-0.jsonl`` and
``<source>/source.jsonl``.

Source: hijohnnylin/neuronpedia, ``utils/neuronpedia-utils/neuronpedia_utils/export-data.py``
(the columns of the ``Neuron``, ``Explanation`` and ``Activation`` tables it exports). A source id
is ``<layer>-<set>`` (``6-res-jb``); ours is ``<layer>-res-<dictionary name>``. Features come from
the run's ``features.sqlite`` (``monosemantic analyze`` first); the dictionary's decoder directions
go into each feature's ``vector`` only with ``--vectors`` (files grow by n·d floats).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monosemantic.features import db
from monosemantic.fsio import write_text
from monosemantic.interop.base import ExportMeta
from monosemantic.interop.hooks import saelens_hook
from monosemantic.sae import SparseAutoencoder


def source_id(meta: ExportMeta) -> str:
    return f"{meta.layer}-res-{meta.name}"


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write(
    sae: SparseAutoencoder, meta: ExportMeta, out: Path, run: Path, *, vectors: bool = False
) -> list[Path]:
    """Write the analysed features of ``meta.name`` in ``run`` under ``out/<source id>/``.

    Raises:
        UserError: the dictionary is not analysed (from ``features.db``).
    """
    source = source_id(meta)
    model_id = meta.model.replace("/", "-").lower()
    base = {"modelId": model_id, "layer": source}
    con = db.open_db(run, readonly=True)
    try:
        words = db.vocab(con)
        rows = con.execute("SELECT * FROM features WHERE sae = ? ORDER BY id", (meta.name,)).fetchall()
        db.feature_row(con, meta.name, 0)  # a one-line error when not analysed
        W_dec = sae.W_dec.detach()
        features, activations, explanations = [], [], []
        for r in rows:
            i = int(r["id"])
            promoted = db.loads(r["promoted"]) or []
            suppressed = db.loads(r["suppressed"]) or []
            feature = {
                **base,
                "index": str(i),
                "maxActApprox": float(r["max_act"]),
                "frac_nonzero": float(r["freq"]),
                # the logit lens of the decoder direction: Neuronpedia's top positive/negative logits
                "pos_str": [t for t, _ in promoted],
                "pos_values": [v for _, v in promoted],
                "neg_str": [t for t, _ in suppressed],
                "neg_values": [v for _, v in suppressed],
                "hookName": saelens_hook(meta.layer),
                "hasVector": vectors,
            }
            if vectors:
                feature["vector"] = W_dec[:, i].tolist()
            features.append(feature)
            for c in db.contexts(con, meta.name, i, "top", words):
                peak = max(range(len(c.acts)), key=c.acts.__getitem__) if c.acts else 0
                activations.append(
                    {
                        **base,
                        "index": str(i),
                        "tokens": c.tokens,
                        "values": c.acts,
                        "maxValue": max(c.acts, default=0.0),
                        "maxValueTokenIndex": peak,
                        "minValue": min(c.acts, default=0.0),
                        "dataSource": f"monosemantic:{meta.name}:seq{c.seq}",
                    }
                )
            if r["explanation"]:
                explanations.append(
                    {
                        **base,
                        "index": str(i),
                        "description": r["explanation"],
                        "typeName": "monosemantic",
                        "explanationModelName": r["explainer"] or "monosemantic",
                    }
                )
    finally:
        con.close()
    folder = out / source
    files = {
        folder / "features" / "batch-0.jsonl": features,
        folder / "activations" / "batch-0.jsonl": activations,
        folder / "explanations" / "batch-0.jsonl": explanations,
        folder / "source.jsonl": [{"id": source, "modelId": model_id, "hookName": saelens_hook(meta.layer)}],
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, _jsonl(content))
    return list(files)
