"""Feature splitting across the sizes of a run: a feature of a smaller dictionary and its family in
the larger ones, as *Scaling Monosemanticity* shows across its 1M / 4M / 34M dictionaries.

A child of feature a (dictionary of size n) is a feature of the next larger dictionary whose
decoder direction has cosine ≥ ``min_cosine`` with a's (the ``k`` nearest at most). Each edge also
carries the co-activation P(child fires | parent fires), measured on held-out activations: a
feature that split into finer ones has children that fire on subsets of its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from monosemantic.features.neighbors import nearest, unit_directions
from monosemantic.sae import SparseAutoencoder


@dataclass
class Node:
    sae: str
    feature: int
    cosine: float = 1.0
    """Decoder cosine with the parent (1 for the root)."""
    coactivation: float = 1.0
    """P(this fires | the parent fires) on the sample (1 for the root)."""
    children: list[Node] = field(default_factory=list)

    def walk(self) -> list[Node]:
        return [self] + [n for c in self.children for n in c.walk()]


def family_tree(
    chain: list[tuple[str, SparseAutoencoder]],
    root: int,
    sample: Tensor,
    *,
    k: int = 3,
    min_cosine: float = 0.3,
    batch: int = 4096,
) -> Node:
    """The family of feature ``root`` of ``chain[0]`` in the larger dictionaries ``chain[1:]``
    (ordered by size); ``sample`` (N, d) raw activations for the co-activations."""
    tree = Node(chain[0][0], root)
    level = [tree]
    dirs = [unit_directions(sae.W_dec) for _, sae in chain]
    for depth in range(1, len(chain)):
        nxt = []
        for node in level:
            cos, idx = nearest(dirs[depth - 1], torch.tensor([node.feature]), dirs[depth], k, same=False)
            for c, j in zip(cos[0].tolist(), idx[0].tolist(), strict=True):
                if c >= min_cosine:
                    node.children.append(Node(chain[depth][0], j, c))
            nxt += node.children
        level = nxt
    _coactivations(tree, dict(chain), sample, batch)
    return tree


@torch.no_grad()
def _coactivations(tree: Node, saes: dict[str, SparseAutoencoder], sample: Tensor, batch: int) -> None:
    nodes = tree.walk()
    wanted: dict[str, list[int]] = {}
    for n in nodes:
        wanted.setdefault(n.sae, []).append(n.feature)
    fires: dict[tuple[str, int], Tensor] = {}
    for name, feats in wanted.items():
        cols = torch.tensor(sorted(set(feats)))
        # the whole dictionary is encoded: TopK-style activations depend on every feature
        on = torch.cat(
            [saes[name].encode(sample[i : i + batch])[1][:, cols] > 0 for i in range(0, len(sample), batch)]
        )
        fires.update({(name, int(c)): on[:, i] for i, c in enumerate(cols.tolist())})

    def visit(node: Node) -> None:
        parent = fires[(node.sae, node.feature)]
        for child in node.children:
            both = (parent & fires[(child.sae, child.feature)]).sum()
            child.coactivation = float(both / parent.sum().clamp(min=1))
            visit(child)

    visit(tree)
