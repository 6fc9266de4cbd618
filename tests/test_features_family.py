"""Neighbours by decoder cosine and feature-splitting trees on hand-built dictionaries."""

from __future__ import annotations

import sqlite3

import torch

from monosemantic.features.db import _SCHEMA
from monosemantic.features.family import family_tree
from monosemantic.features.neighbors import nearest, neighbors_of, store_neighbors, unit_directions
from monosemantic.sae import ReluSAE


def relu_sae(dec: torch.Tensor, enc: torch.Tensor, b_enc: torch.Tensor) -> ReluSAE:
    """dec (d, n) decoder columns, enc (n, d) encoder rows."""
    sae = ReluSAE(dec.shape[0], dec.shape[1])
    with torch.no_grad():
        sae.W_dec.copy_(dec)
        sae.W_enc.copy_(enc)
        sae.b_enc.copy_(b_enc)
        sae.b_dec.zero_()
    return sae


def split_pair() -> tuple[ReluSAE, ReluSAE, torch.Tensor]:
    """A 2-feature dictionary whose feature 0 (direction e0) splits into features 1 and 2 of a
    4-feature one (e0 ± e1/2); a sample where e0 is on and e1 is ±1 with equal counts."""
    e = torch.eye(8)
    small = relu_sae(torch.stack([e[0], e[5]], 1), torch.stack([e[0], e[5]]), torch.zeros(2))
    halves = [e[0] + 0.5 * e[1], e[0] - 0.5 * e[1]]
    big_dec = torch.stack([e[3], *halves, e[4]], 1)
    big = relu_sae(big_dec, torch.stack([e[3], *halves, e[4]]), torch.tensor([0.0, -0.6, -0.6, 0.0]))
    sign = torch.tensor([1.0, -1.0]).repeat(50)
    sample = e[0] + sign.unsqueeze(1) * e[1]  # (100, 8)
    return small, big, sample


def test_nearest_excludes_self_and_matches_a_direct_cosine() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 20)
    dirs = unit_directions(w)
    cos, idx = nearest(dirs, torch.arange(20), dirs, 3, same=True, batch=7)
    full = torch.nn.functional.cosine_similarity(w.T.unsqueeze(1), w.T.unsqueeze(0), dim=-1)
    full.fill_diagonal_(-2)
    ref_cos, ref_idx = full.topk(3, dim=1)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(cos, ref_cos)


def test_splitting_tree_finds_the_children_and_their_coactivation() -> None:
    small, big, sample = split_pair()
    tree = family_tree([("relu-2", small), ("relu-4", big)], 0, sample, k=3, min_cosine=0.5)
    assert sorted(c.feature for c in tree.children) == [1, 2]
    for c in tree.children:
        assert abs(c.cosine - 1 / (1.25**0.5)) < 1e-5
        assert c.coactivation == 0.5  # each half fires on exactly half of the parent's tokens
    lone = family_tree([("relu-2", small), ("relu-4", big)], 1, sample, min_cosine=0.5)
    assert lone.children == []  # e5 has no counterpart in the larger dictionary


def test_neighbors_table_within_and_across_sizes() -> None:
    small, big, _ = split_pair()
    con = sqlite3.connect(":memory:")
    con.executescript(_SCHEMA)
    other = relu_sae(torch.eye(8)[:, :3], torch.eye(8)[:3], torch.zeros(3))
    n = store_neighbors(
        con,
        {"relu-2": ("relu", small.W_dec), "relu-4": ("relu", big.W_dec), "topk-3": ("topk", other.W_dec)},
        k_within=2,
        k_across=1,
    )
    near = neighbors_of(con, "relu-2", 0)
    assert set(near) == {"relu-2", "relu-4"}  # other architectures are not neighbours
    assert near["relu-4"][0][0] in (1, 2) and near["relu-2"] == [(1, 0.0)]
    assert n == 2 * 1 + 2 * 1 + 4 * 2 + 4 * 1 + 3 * 2
