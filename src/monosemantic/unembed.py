"""The model's own path from the residual stream after the last block to the logits.

transformers applies, after the last block, a family-specific chain that ``lm_head`` alone does
not reproduce:

    final norm        ``model.norm`` (Llama, Mistral, Qwen2, Gemma), ``transformer.ln_f`` (GPT-2),
                      ``gpt_neox.final_layer_norm``, ``model.decoder.final_layer_norm`` (OPT; absent
                      when ``do_layer_norm_before`` is False, as in opt-350m)
    projection        OPT's ``project_out`` (hidden_size -> word_embed_proj_dim, e.g. 1024 -> 512)
    unembedding       ``get_output_embeddings()``, tied to the input embedding or not
    logit transform   soft-capping ``cap · tanh(z / cap)`` (Gemma-2/3 ``final_logit_softcapping``),
                      Cohere's ``logit_scale`` (×), Granite's ``logits_scaling`` (÷)

``output_path`` assembles that chain from the modules and the config; ``output_path_mismatch``
checks it once against the model's own forward pass, so that a family with another step is
reported instead of giving silently wrong logit effects. Steering and logit effects both use
``residual_to_logits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from monosemantic.errors import UserError
from monosemantic.models import LoadedModel, to_model

_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm", "norm_f")
_PROJECTIONS = ("project_out",)


@dataclass
class OutputPath:
    """residual (..., d_model) in the model's dtype -> logits (..., vocab), as the model computes them."""

    norm: nn.Module
    projection: nn.Module
    head: nn.Module
    softcap: float | None = None
    """Gemma-2's final_logit_softcapping: logits = cap · tanh(logits / cap)."""
    scale: float = 1.0
    """Multiplier of the logits (Cohere's logit_scale, 1 / Granite's logits_scaling)."""

    def __call__(self, resid: Tensor) -> Tensor:
        logits = self.head(self.projection(self.norm(resid)))
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _outside_blocks(lm: LoadedModel, names: tuple[str, ...]) -> nn.Module | None:
    """The first module whose attribute name is one of ``names`` and that is not inside a block
    (OPT's blocks hold a ``final_layer_norm`` of their own)."""
    prefix = next(n for n, m in lm.model.named_modules() if m is lm.blocks) + "."
    for name, module in lm.model.named_modules():
        if name.rsplit(".", 1)[-1] in names and not name.startswith(prefix):
            return module
    return None


def output_path(lm: LoadedModel) -> OutputPath:
    """The chain after the last block (see the module docstring). Raises UserError for a model
    without an output head (an encoder loaded without its LM head)."""
    head = lm.model.get_output_embeddings() if lm.is_causal else None  # type: ignore[operator]
    if not isinstance(head, nn.Module):
        raise UserError(f"{lm.name} has no unembedding: logits need a causal language model")
    config: Any = lm.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(text, "final_logit_softcapping", None)
    scale = float(getattr(text, "logit_scale", None) or 1.0)  # Cohere multiplies the logits
    scale /= float(getattr(text, "logits_scaling", None) or 1.0)  # Granite divides them
    return OutputPath(
        norm=_outside_blocks(lm, _FINAL_NORMS) or nn.Identity(),
        projection=_outside_blocks(lm, _PROJECTIONS) or nn.Identity(),
        head=head,
        softcap=float(cap) if cap else None,
        scale=scale,
    )


@torch.no_grad()
def residual_to_logits(lm: LoadedModel, resid: Tensor) -> Tensor:
    """resid (..., d_model), any float dtype and device (a dictionary's fp32 directions or
    reconstruction) -> float32 logits (..., vocab) on the model's device, through the model's own
    final norm, projection, unembedding and logit transform."""
    return output_path(lm)(to_model(lm, resid)).float()


@torch.no_grad()
def output_path_mismatch(lm: LoadedModel, n_tokens: int = 8) -> str | None:
    """None when ``output_path`` reproduces the model's logits from its last block's output on a
    short input; otherwise what differs (a family whose output path we do not know)."""
    try:
        path = output_path(lm)
    except UserError as e:
        return str(e)
    captured: list[Tensor] = []

    def hook(_m: nn.Module, _args: tuple, out: Tensor | tuple) -> None:
        captured.append(out[0] if isinstance(out, tuple) else out)

    config: Any = lm.model.config
    vocab = int(getattr(path.head, "out_features", 0) or config.vocab_size)
    ids = (torch.arange(n_tokens) * 7919 % max(vocab, 1)).unsqueeze(0).to(lm.device)
    handle = lm.blocks[-1].register_forward_hook(hook)
    try:
        expected = lm.model(input_ids=ids, use_cache=False).logits.float()
    finally:
        handle.remove()
    try:
        got = path(captured[0]).float()
    except RuntimeError as e:  # shapes that do not chain
        return f"{type(lm.model).__name__}: {str(e).splitlines()[0]}"
    # bf16/fp16 round each step differently from the fused forward: compare at their precision
    tol = (1e-4 if lm.dtype == torch.float32 else 3e-2) * (1 + expected.abs().max().item())
    err = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
    if not err <= tol:
        return (
            f"{type(lm.model).__name__}: the final norm / projection / unembedding we found "
            f"differ from the model's own logits by {err:.3g}"
        )
    return None
