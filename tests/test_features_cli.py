"""analyze / feature on a tiny trained run: the database, agreement with a direct computation,
resume after Ctrl-C, the model-forward path, and bad input."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

import monosemantic.features.analyze as analyze_mod
import monosemantic.features.feature_map as feature_map_mod
from monosemantic.activations import ActivationStore
from monosemantic.config import TrainConfig
from monosemantic.dictionary import load_dictionary
from monosemantic.features import db
from monosemantic.stages.pipeline import run_train
from tests.helpers import WINDOW, cli, fake_llm_server, needs_minilm, one_line_error, plant_feature


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, harvested: Path) -> Path:
    out = tmp_path_factory.mktemp("features") / "run"
    shutil.copytree(harvested, out)
    run_train(TrainConfig(sizes=[16, 64], batch_size=256, epochs=2), out, False)
    return out


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    return shutil.copytree(trained, tmp_path / "run")


def analyze(capsys, monkeypatch, run: Path, *extra: str) -> tuple[int, str]:
    return cli(capsys, monkeypatch, "analyze", run, *WINDOW, "--checkpoint-every", "40", *extra)


def table(run: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(run / "features.sqlite")
    try:
        return [tuple(r) for r in con.execute(sql)]
    finally:
        con.close()


def test_analyze_writes_the_database(capsys, monkeypatch, run: Path) -> None:
    code, err = analyze(capsys, monkeypatch, run)
    assert code == 0, err
    assert table(run, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(db.SCHEMA_VERSION),)]
    assert table(run, "SELECT sae, finished FROM analyses ORDER BY sae") == [("relu-16", 1), ("relu-64", 1)]
    assert table(run, "SELECT sae, count(*) FROM features GROUP BY sae ORDER BY sae") == [
        ("relu-16", 16),
        ("relu-64", 64),
    ]
    indexes = {r[0] for r in table(run, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"contexts_by_feature", "features_by_freq"} <= indexes
    # frequencies and maxima agree with encoding the whole store directly
    store = ActivationStore(run)
    sae, _ = load_dictionary(run / "saes" / "relu-64")
    acts = torch.cat([store.kept(s) for s in store.manifest["shards"]])
    feats = sae.encode(acts)[1]
    rows = table(run, "SELECT freq, max_act, n_fired FROM features WHERE sae = 'relu-64' ORDER BY id")
    freq, max_act, n_fired = (torch.tensor(c) for c in zip(*rows, strict=True))
    assert n_fired.tolist() == (feats > 0).sum(0).tolist()
    torch.testing.assert_close(freq.float(), (feats > 0).float().mean(0))
    torch.testing.assert_close(max_act.float(), feats.amax(0), rtol=1e-4, atol=1e-5)
    # contexts: bounded per feature, windows inside their sequence, activations match
    counts = table(
        run,
        "SELECT kind, max(n) FROM (SELECT kind, count(*) n FROM contexts GROUP BY sae, feature, kind) "
        "GROUP BY kind",
    )
    assert dict(counts)["top"] <= 20 and dict(counts)["quantile"] <= 40 and dict(counts)["random"] <= 10
    con = db.open_db(run)
    words = db.vocab(con)
    j = int(n_fired.argmax())
    top = db.contexts(con, "relu-64", j, "top", words)
    assert top and top[0].activation == pytest.approx(float(max_act[j]), rel=1e-3)
    assert [c.activation for c in top] == sorted((c.activation for c in top), reverse=True)
    assert len(top[0].tokens) == 10 and max(top[0].acts) == pytest.approx(top[0].activation, rel=1e-2)
    # FTS over top contexts and sequences finds the text they hold
    word = next(w for w in top[0].text.split() if w.isalpha()) if " " in top[0].text else top[0].tokens[0]
    assert db.search_contexts(con, "relu-64", f'"{word}"')
    promoted = json.loads(db.feature_row(con, "relu-64", j)["promoted"])
    assert len(promoted) == 10 and promoted[0][1] >= promoted[-1][1]
    con.close()
    code, err = cli(capsys, monkeypatch, "feature", run, str(j), "--sae", "relu-64")
    assert code == 0, err
    near = table(
        run, "SELECT other_sae, count(*) FROM neighbors WHERE sae = 'relu-16' AND feature = 0 GROUP BY 1"
    )
    assert dict(near) == {"relu-16": 10, "relu-64": 5}
    code, err = cli(capsys, monkeypatch, "family", run, "0", "--min-cosine", "0")
    assert code == 0, err
    one_line_error(*cli(capsys, monkeypatch, "family", run, "16"), "0 to 15")


def test_analyze_resumes_after_ctrl_c_to_the_same_database(capsys, monkeypatch, run: Path, tmp_path) -> None:
    other = tmp_path / "other"
    shutil.copytree(run, other)
    assert analyze(capsys, monkeypatch, run)[0] == 0
    real = analyze_mod.store_batches

    def interrupted(*a, **k):
        for i, b in enumerate(real(*a, **k)):
            if i == 7:
                raise KeyboardInterrupt
            yield b

    monkeypatch.setattr(analyze_mod, "store_batches", interrupted)
    code, err = analyze(capsys, monkeypatch, other)
    assert code == 130 and "resume" in err
    done = table(other, "SELECT seqs_done, finished FROM analyses")
    assert done and all(n > 0 and not f for n, f in done)
    monkeypatch.setattr(analyze_mod, "store_batches", real)
    assert analyze(capsys, monkeypatch, other)[0] == 0
    for sql in (
        "SELECT * FROM features ORDER BY sae, id",
        "SELECT sae, feature, kind, rank, band, activation, seq, start, peak, acts FROM contexts "
        "ORDER BY sae, feature, kind, rank",
        "SELECT corpus, seq, tokens FROM sequences ORDER BY corpus, seq",
    ):
        assert table(run, sql) == table(other, sql)
    # a finished analysis is not redone; other settings are refused without --force
    assert analyze(capsys, monkeypatch, other)[0] == 0
    one_line_error(*analyze(capsys, monkeypatch, other, "--top-k", "5"), "--force")
    assert analyze(capsys, monkeypatch, other, "--top-k", "5", "--force")[0] == 0
    assert table(other, "SELECT max(rank) FROM contexts WHERE kind = 'top'") == [(4,)]


def test_analyze_a_corpus_through_the_model(capsys, monkeypatch, run: Path, tiny_corpus: Path) -> None:
    code, err = analyze(
        capsys, monkeypatch, run, "--sae", "relu-16", "--corpus", str(tiny_corpus), "--tokens", "900"
    )
    assert code == 0, err
    (n_seqs,) = table(run, "SELECT count(*) FROM sequences")[0]
    assert n_seqs == int(np.ceil(900 / 15))
    (tokens,) = table(run, "SELECT tokens_done FROM analyses WHERE sae = 'relu-16'")[0]
    assert 0 < tokens <= n_seqs * 15


def test_bad_input_is_one_line(capsys, monkeypatch, run: Path, tmp_path: Path) -> None:
    one_line_error(*cli(capsys, monkeypatch, "analyze", tmp_path / "missing"), "does not exist")
    one_line_error(*analyze(capsys, monkeypatch, run, "--sae", "relu-999"), "relu-999")
    one_line_error(*cli(capsys, monkeypatch, "feature", run, "3"), "analyze")
    assert analyze(capsys, monkeypatch, run, "--sae", "relu-16")[0] == 0
    one_line_error(*cli(capsys, monkeypatch, "feature", run, "99"), "0 to 15")
    one_line_error(*cli(capsys, monkeypatch, "feature", run, "3", "--sae", "relu-64"), "not analysed")
    one_line_error(
        *cli(capsys, monkeypatch, "feature", run, "3", "--sae", "relu-9"), "has no dictionary 'relu-9'"
    )
    one_line_error(*analyze(capsys, monkeypatch, run, "--before", "20"), "sequence length")
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("saes", "features.sqlite*"))
    one_line_error(*cli(capsys, monkeypatch, "analyze", bare), "train")


def test_text_with_markup_brackets_is_shown_as_text(capsys, monkeypatch, run: Path) -> None:
    """Rich reads [..] in a string as markup: a query, a context or a completion holding brackets
    must neither crash the table nor lose its text."""
    assert analyze(capsys, monkeypatch, run, "--sae", "relu-16")[0] == 0
    code, err = cli(capsys, monkeypatch, "search", run, "[/bold] code [red]", "--sae", "relu-16")
    assert code == 0, err
    out = capsys.readouterr().out
    assert "Traceback" not in err
    steer = [
        "steer",
        run,
        "--sae",
        "relu-16",
        "--feature",
        "1",
        "--prompt",
        "[/x] code",
        "--max-new-tokens",
        "2",
    ]
    code, err = cli(capsys, monkeypatch, *steer)
    assert code == 0, err
    del out


def test_search_ranks_a_planted_feature_first(capsys, monkeypatch, run: Path, tiny_llama_dir: Path) -> None:
    from monosemantic.features.search import search, span_activations
    from monosemantic.models import load_model

    plant_feature(run, "relu-64", 7, "paris")
    assert analyze(capsys, monkeypatch, run, "--sae", "relu-64")[0] == 0
    con = db.open_db(run)
    sae, _ = load_dictionary(run / "saes" / "relu-64")
    lm = load_model(str(tiny_llama_dir))
    hits, occs = search(con, lm, 2, "relu-64", sae, "paris", max_matches=16)
    assert len(occs) == 17 and occs[0].source == "query"
    assert hits[0].feature == 7 and hits[0].hit_rate == 1.0 and hits[0].context_precision == 1.0
    assert hits[0].score > 2 * hits[1].score
    assert all(0 <= h.context_precision <= 1 for h in hits)  # top contexts only, not the samples
    # occurrences of different lengths read in one padded batch give what one at a time gives
    torch.testing.assert_close(
        span_activations(lm, 2, sae, occs, batch=16), span_activations(lm, 2, sae, occs, batch=1)
    )
    other, _ = search(con, lm, 2, "relu-64", sae, "buffer", max_matches=16)
    assert 7 not in [h.feature for h in other]
    con.close()
    code, err = cli(capsys, monkeypatch, "search", run, "paris", "--sae", "relu-64")
    assert code == 0, err


def test_search_does_not_rank_an_almost_dead_feature() -> None:
    from monosemantic.features.search import MIN_FIRED, rank

    # feature 0 fired on 2 analysed tokens at 0.001: any activation on the query gives it a huge
    # lift and full strength; feature 1 is a real, rarer-than-chance match; feature 2 fires everywhere
    stats = {
        "freq": np.array([1e-5, 1e-3, 0.5]),
        "max_act": np.array([1e-3, 2.0, 2.0]),
        "n_fired": np.array([2.0, 200.0, 10**5]),
    }
    acts = torch.tensor([[0.5, 1.5, 2.0], [0.5, 1.0, 2.0]])
    hits = rank(acts, [1, 1], stats, {}, top=3)
    assert [h.feature for h in hits] == [1, 2] and hits[0].lift == pytest.approx(1000)
    assert hits[1].score == pytest.approx(1.0)  # lift 2: fires on half of all tokens
    stats["n_fired"][0] = MIN_FIRED
    assert rank(acts, [1, 1], stats, {}, top=3)[0].feature == 0


@needs_minilm
def test_explain_offline_and_with_an_llm_endpoint(capsys, monkeypatch, run: Path) -> None:
    plant_feature(run, "relu-64", 7, "paris")
    assert analyze(capsys, monkeypatch, run, "--sae", "relu-64")[0] == 0
    code, err = cli(
        capsys, monkeypatch, "explain", run, "--sae", "relu-64", "--ids", "7", "--explainer", "tokens"
    )
    assert code == 0, err
    (text, explainer, score) = table(
        run, "SELECT explanation, explainer, score_auc FROM features WHERE id = 7"
    )[0]
    assert text.startswith('fires on " paris" (100%)') and "MiniLM" in explainer and 0 <= score <= 1
    with fake_llm_server() as url:
        code, err = cli(
            capsys, monkeypatch, "explain", run, "--sae", "relu-64", "--ids", "7", "--explainer-url", url
        )
    assert code == 0, err
    row = table(run, "SELECT explanation, explainer, score_auc, score_bacc FROM features WHERE id = 7")[0]
    # the fake LLM marks exactly the excerpts containing "paris": the planted feature's held-out
    # activating contexts all do, its non-activating ones never do
    assert row == ("The word paris", "LLM", 1.0, 1.0)
    con = db.open_db(run)
    assert db.search_explanations(con, "relu-64", '"paris"', 5) == [(7, "The word paris")]
    con.close()
    # the default offline explainer names lexicon entries: a two-entry lexicon keeps it quick
    from monosemantic.features import label

    monkeypatch.setenv("XDG_CACHE_HOME", str(run / "cache"))
    entries = [
        label.Entry("capital city", "Paris, the capital city of France"),
        label.Entry("fish", "a trout"),
    ]
    monkeypatch.setattr(label, "lexicon", lambda: entries)
    from monosemantic.features.explain_run import choose_features

    con = db.open_db(run)
    chosen = choose_features(con, "relu-64", 3, [], 0)
    con.close()
    code, err = cli(capsys, monkeypatch, "explain", run, "--sae", "relu-64", "--features", "3")
    assert code == 0, err
    assert {r[0] for r in table(run, "SELECT explainer FROM features WHERE explainer IS NOT NULL")} >= {
        "lexicon + MiniLM"
    }
    kinds = dict(
        table(run, "SELECT feature, count(DISTINCT kind) FROM contexts WHERE sae = 'relu-64' GROUP BY 1")
    )
    explained = {
        r[0] for r in table(run, "SELECT id FROM features WHERE sae = 'relu-64' AND explanation IS NOT NULL")
    }
    assert len(chosen) == 3 and explained == {j for j in chosen if kinds.get(j) == 3} | {7}
    # the same call again leaves the drawn features this explainer explained as they are, and says so
    before = table(run, "SELECT id, explanation, score_auc FROM features ORDER BY id")
    code, err = cli(capsys, monkeypatch, "explain", run, "--sae", "relu-64", "--features", "3")
    assert code == 0, err
    assert "explained already" in err and "--seed 1" in err and "--again" in err
    assert table(run, "SELECT id, explanation, score_auc FROM features ORDER BY id") == before
    one_line_error(*cli(capsys, monkeypatch, "explain", run, "--sae", "relu-64", "--ids", "x"), "--ids")
    one_line_error(
        *cli(
            capsys,
            monkeypatch,
            "explain",
            run,
            "--sae",
            "relu-64",
            "--ids",
            "7",
            "--explainer-url",
            "http://127.0.0.1:9/v1",
        ),
        "did not answer",
    )


@pytest.mark.slow  # its report runs UMAP, whose first fit in a process compiles numba kernels (~20 s)
def test_catalog_ranks_the_planted_feature_for_its_probe_set(
    capsys, monkeypatch, run: Path, tmp_path
) -> None:
    from monosemantic.features.catalog import DEFAULT_PROBES, load_probes, pairwise_auc

    assert {s.name for s in load_probes(DEFAULT_PROBES)} >= {
        "sql-string-concatenation",
        "shell-injection",
        "people",
    }
    torch.testing.assert_close(
        pairwise_auc(torch.tensor([[2.0, 0.0], [3.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 2.0]])),
        torch.tensor([1.0, 0.125]),
    )
    plant_feature(run, "relu-64", 7, "paris")
    assert analyze(capsys, monkeypatch, run, "--sae", "relu-64")[0] == 0
    probes = tmp_path / "probes.jsonl"
    rows = [("paris", 1, f"the code of paris {w}") for w in ("is", "was", "sql", "shell")]
    rows += [("paris", 0, f"the code of einstein {w}") for w in ("is", "was", "sql", "shell")]
    rows += [("sql", 1, "select sql where"), ("sql", 0, "the a of")]
    probes.write_text("\n".join(json.dumps({"set": s, "label": y, "text": t}) for s, y, t in rows))
    code, err = cli(capsys, monkeypatch, "catalog", run, "--sae", "relu-64", "--probes", probes)
    assert code == 0, err
    best = table(run, "SELECT feature, auc FROM catalog WHERE probe_set = 'paris' ORDER BY rank LIMIT 1")
    assert best == [(7, 1.0)]
    # the report gains the feature section: catalog, map, splitting trees, table, a page per listed feature
    code, err = cli(capsys, monkeypatch, "report", run)
    assert code == 0, err
    page = (run / "report" / "index.html").read_text()
    for part in ("Catalog", "Map of relu-64", "Feature splitting (relu)", "id='ftab'"):
        assert part in page, part
    assert (run / "report" / "map-relu-64.png").stat().st_size > 1000
    # the map's UMAP coordinates are cached: a second report does not run UMAP again
    assert len(list((run / "report" / ".cache").glob("umap-*.npy"))) == 1
    monkeypatch.setattr(feature_map_mod, "embed_2d", lambda *a, **k: pytest.fail("UMAP ran again"))
    assert cli(capsys, monkeypatch, "report", run)[0] == 0
    feature_page = (run / "report" / "features" / "relu-64-7.html").read_text()
    assert "paris" in feature_page and "Top contexts" in feature_page
    probes.write_text('{"set": "x", "label": 1, "text": "a"}\n')
    one_line_error(
        *cli(capsys, monkeypatch, "catalog", run, "--sae", "relu-64", "--probes", probes), "label 0"
    )


def test_read_only_commands_leave_the_run_folder_as_they_found_it(capsys, monkeypatch, run: Path) -> None:
    """search, feature and family only read features.sqlite: no -wal / -shm file may be left next
    to it (a WAL database creates them for every reader that does not open it read-only)."""
    assert analyze(capsys, monkeypatch, run, "--sae", "relu-16")[0] == 0
    before = sorted(p.name for p in run.iterdir())
    for args in (
        ["search", run, "code", "--sae", "relu-16", "--no-semantic"],
        ["feature", run, "3", "--sae", "relu-16"],
        ["family", run, "3", "--sae", "relu-16"],
    ):
        code, err = cli(capsys, monkeypatch, *args)
        assert code == 0, err
        assert sorted(p.name for p in run.iterdir()) == before, args[0]
    con = db.open_db(run, readonly=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            con.execute("DELETE FROM meta")
    finally:
        con.close()
    assert sorted(p.name for p in run.iterdir()) == before
