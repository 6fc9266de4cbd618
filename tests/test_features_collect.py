"""The streaming per-feature collector: statistics, top-k, uniform quantile samples, negatives, resume."""

from __future__ import annotations

import io

import torch

from monosemantic.features.collect import HIST_EDGES, CollectorConfig, FeatureCollector, quantile_bands

CFG = CollectorConfig(top_k=5, n_samples=40, n_bands=10, n_random=4, before=3, after=2, seed=0)


def planted(n_seqs: int = 400, t: int = 12, n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature 0 peaks at value s+1 in sequence s (one token, at a random position); feature 1 fires
    nowhere; feature 2 fires weakly everywhere except in even sequences. -> feats (S, T, n), valid."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.zeros(n_seqs, t, n)
    pos = torch.randint(1, t, (n_seqs,), generator=g)
    feats[torch.arange(n_seqs), pos, 0] = torch.arange(n_seqs, dtype=torch.float) + 1
    feats[1::2, 1:, 2] = 0.01
    valid = torch.ones(n_seqs, t, dtype=torch.bool)
    valid[:, 0] = False
    return feats, valid


def collect(
    feats: torch.Tensor, valid: torch.Tensor, batch: int = 32, cfg: CollectorConfig = CFG
) -> FeatureCollector:
    c = FeatureCollector(feats.shape[-1], cfg)
    for i in range(0, len(feats), batch):
        c.update(feats[i : i + batch], torch.arange(i, min(i + batch, len(feats))), valid[i : i + batch])
    return c


def test_quantile_bands_cut_equal_counts_in_activation_order() -> None:
    acts = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0, 6.0])
    assert quantile_bands(acts, 3).tolist() == [2, 0, 1, 0, 1, 2]
    assert quantile_bands(torch.arange(40.0), 10).bincount().tolist() == [4] * 10


def test_statistics_match_a_direct_computation() -> None:
    feats, valid = planted()
    feats[:, 0, :] = 100.0  # invalid positions must not count
    res = collect(feats, valid).finalize()
    ref = feats * valid.unsqueeze(-1)
    n_valid = int(valid.sum())
    assert res.n_tokens == n_valid
    assert res.n_fired.tolist() == (ref > 0).sum((0, 1)).tolist()
    torch.testing.assert_close(res.freq, (ref > 0).sum((0, 1)).float() / n_valid)
    torch.testing.assert_close(res.max, torch.tensor([400.0, 0.0, 0.01]))
    torch.testing.assert_close(res.mean[0], ref[..., 0].sum() / 400)
    assert res.hist.sum(1).tolist() == res.n_fired.tolist()
    bin_of_400 = int(torch.bucketize(torch.tensor(400.0), HIST_EDGES)) - 1
    assert res.hist[0, bin_of_400] >= 1


def test_top_contexts_are_the_strongest_sequences_with_their_windows() -> None:
    feats, valid = planted()
    res = collect(feats, valid).finalize()
    top = [e for e in res.contexts[0] if e.kind == "top"]
    assert [e.activation for e in top] == [400.0, 399.0, 398.0, 397.0, 396.0]
    for e in top:
        assert e.seq == int(e.activation) - 1
        assert e.start <= e.peak < e.start + CFG.width and 0 <= e.start <= 12 - CFG.width
        window = feats[e.seq, e.start : e.start + CFG.width, 0]
        torch.testing.assert_close(torch.as_tensor(e.window).float(), window.half().float())
    assert res.contexts[1] == [] or all(e.kind == "random" for e in res.contexts[1])


def test_quantile_samples_are_uniform_over_the_activating_sequences() -> None:
    feats, valid = planted()
    res = collect(feats, valid).finalize()
    sampled = [e for e in res.contexts[0] if e.kind == "quantile"]
    assert len(sampled) == 40 and len({e.seq for e in sampled}) == 40
    acts = torch.tensor([e.activation for e in sampled])
    # a uniform sample of 40 from 1..400: every population decile is represented; a top-biased or
    # first-seen sample (the usual bugs) leaves the low or the late deciles empty
    per_decile = torch.bincount(((acts - 1) // 40).long(), minlength=10)
    assert per_decile.min() >= 1, per_decile
    bands = torch.tensor([e.band for e in sampled])
    assert bands.bincount().tolist() == [4] * 10
    for b in range(9):  # bands are ordered by activation
        assert acts[bands == b].max() <= acts[bands == b + 1].min()


def test_random_contexts_are_windows_where_the_feature_is_silent() -> None:
    feats, valid = planted()
    res = collect(feats, valid).finalize()
    for j in range(3):
        for e in (e for e in res.contexts[j] if e.kind == "random"):
            assert feats[e.seq, e.start : e.start + CFG.width, j].max() == 0
    negatives_2 = [e for e in res.contexts[2] if e.kind == "random"]
    assert len(negatives_2) == 4 and all(e.seq % 2 == 0 for e in negatives_2)
    assert not [e for e in res.contexts[1] if e.kind != "random"]  # never fires: no top, no samples


def test_resumed_collection_equals_an_uninterrupted_one() -> None:
    feats, valid = planted(n_seqs=200)
    full = collect(feats, valid).finalize()
    first = collect(feats[:96], valid[:96])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    resumed = FeatureCollector(3, CFG)
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for i in range(96, 200, 32):
        resumed.update(feats[i : i + 32], torch.arange(i, min(i + 32, 200)), valid[i : i + 32])
    res = resumed.finalize()
    assert res.n_fired.tolist() == full.n_fired.tolist() and res.max.tolist() == full.max.tolist()
    key = lambda es: [(e.kind, e.band, e.activation, e.seq, e.start) for e in es]  # noqa: E731
    assert [key(c) for c in res.contexts] == [key(c) for c in full.contexts]
