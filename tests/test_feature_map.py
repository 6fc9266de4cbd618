"""The feature map's UMAP embedding: its side effects on the process stay contained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monosemantic.features.feature_map import embed_2d


@pytest.mark.slow  # the first UMAP fit in a process compiles numba kernels (~20 s)
def test_umap_leaves_torch_threads_as_they_were() -> None:
    pytest.importorskip("umap")
    torch.set_num_threads(1)  # what the suite runs with; UMAP used to leave it at the core count
    coords = embed_2d(np.random.default_rng(0).standard_normal((40, 8)))
    assert coords.shape == (40, 2)
    assert torch.get_num_threads() == 1
