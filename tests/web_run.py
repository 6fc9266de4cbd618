"""An analysed tiny run for the web tests, with markup planted in its database: a token whose text
is ``<script>`` (so that contexts carry it), an explanation with HTML in it, and a catalog entry."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from monosemantic.config import AnalyzeConfig, HarvestConfig, TrainConfig
from monosemantic.features import db
from monosemantic.integrity import seal_db
from monosemantic.stages.features import run_analyze
from monosemantic.stages.pipeline import run_harvest, run_train
from tests.helpers import save_tiny, write_tiny_corpus

SCRIPT = "<script>alert(1)</script>"
EXPLAINED = 3
"""The feature of relu-64 given an explanation with markup."""


def make_analysed_run(out: Path, model: Path, corpus: Path) -> Path:
    hcfg = HarvestConfig(
        model=str(model), corpus=str(corpus), seq_len=16, layer=2, n_tokens=3000, n_eval_tokens=600,
        shard_tokens=600, device="cpu",
    )  # fmt: skip
    run_harvest(hcfg, out, False)
    run_train(TrainConfig(sizes=[16, 64], batch_size=256, epochs=2, device="cpu"), out, False)
    run_analyze(out, AnalyzeConfig(before=6, after=3, device="cpu"))
    con = db.open_db(out)
    try:
        with db.transaction(con):
            con.execute("UPDATE vocab SET token = ? WHERE id = 2", (SCRIPT.encode(),))  # the word 'the'
            db.set_explanation(con, "relu-64", EXPLAINED, f"{SCRIPT} & 'code' \"x\"", "test", 0.9, 0.8)
            con.execute("INSERT INTO catalog VALUES ('cities', 'relu-64', ?, 0, 0.5, 0.9)", (EXPLAINED,))
            top = con.execute(
                "SELECT feature FROM contexts WHERE sae = 'relu-64' AND kind = 'top' LIMIT 1"
            ).fetchone()
    finally:
        con.close()
    seal_db(out)  # written outside a stage: record the edited database's checksum as a stage would
    assert top is not None
    return out


def build(where: Path) -> Path:
    """The web tests' analysed run built from scratch under ``where`` (model, corpus, run
    ``where/tiny``), as the fixtures build it; for the load test and the fuzzer outside pytest."""
    torch.set_num_threads(1)
    where.mkdir(parents=True, exist_ok=True)
    model = save_tiny("llama", where / "tiny-llama")
    return make_analysed_run(where / "tiny", model, write_tiny_corpus(where / "corpus.jsonl"))


if __name__ == "__main__":  # python -m tests.web_run DIR: build DIR/tiny
    print(build(Path(sys.argv[1])))
