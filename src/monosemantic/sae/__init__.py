"""Sparse autoencoder architectures: pure tensor math, registered by name."""

from monosemantic.sae.base import ForwardOutput, LossContext, LossOutput, SparseAutoencoder
from monosemantic.sae.batchtopk import BatchTopKSAE
from monosemantic.sae.jumprelu import JumpReLUSAE
from monosemantic.sae.matryoshka import MatryoshkaSAE
from monosemantic.sae.relu import ReluSAE, relu_sae_loss
from monosemantic.sae.topk import TopKSAE

ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {
    cls.arch: cls for cls in (ReluSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE)
}

__all__ = [
    "ARCHITECTURES",
    "BatchTopKSAE",
    "ForwardOutput",
    "JumpReLUSAE",
    "LossContext",
    "LossOutput",
    "MatryoshkaSAE",
    "ReluSAE",
    "SparseAutoencoder",
    "TopKSAE",
    "relu_sae_loss",
]
