"""What crosses features, for a module that may hold only a slice of a dictionary's features.

A dictionary alone in its process uses ``LOCAL``, whose methods are plain tensor operations (the
identity, or a per-row top-k). Feature-parallel training (``monosemantic.feature_parallel``) gives
each rank's slice an instance whose methods are collectives over the ranks. The architectures call
these wherever a sum, count, minimum or top-k runs over all features, so that one ``forward`` and one
``loss`` serve a whole dictionary and a slice; this module itself imports no torch.distributed.
"""

from __future__ import annotations

from torch import Tensor

from monosemantic.sae.sparse import Active, topk_per_row


class Collectives:
    """The features are all here: every operation is local."""

    def sum(self, t: Tensor) -> Tensor:
        """Σ over the slices of a partial result that is additive over features (a partial
        reconstruction (B, d), a sparsity term ()); differentiable, the gradient passing through
        unchanged to this slice's own share."""
        return t

    def count(self, t: Tensor) -> Tensor:
        """Σ over the slices of a statistic (a count of dead features), without gradient."""
        return t

    def min(self, t: Tensor) -> Tensor:
        """Element-wise minimum over the slices, without gradient."""
        return t

    def top_k(self, scores: Tensor, k: int) -> Active:
        """ReLU of the k largest entries of each row of scores (R, m), ranked among the whole
        dictionary's columns: this slice's entries among them."""
        return topk_per_row(scores, k)


LOCAL = Collectives()
