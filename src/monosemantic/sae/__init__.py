"""Sparse autoencoder architectures: pure tensor math, registered by name."""

from monosemantic.sae.relu import ForwardOutput, LossOutput, ReluSAE, relu_sae_loss

ARCHITECTURES = {"relu": ReluSAE}

__all__ = ["ARCHITECTURES", "ForwardOutput", "LossOutput", "ReluSAE", "relu_sae_loss"]
