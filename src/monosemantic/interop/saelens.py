"""SAELens (``sae-lens`` 6.x) on disk: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

Source: ``sae_lens/saes/sae.py`` (``SAE.save_model``, ``SAE.load_from_disk``, ``process_sae_in``),
``saes/{standard,topk,jumprelu,batchtopk}_sae.py``. Weights are ``W_enc`` (d_in, d_sae), ``b_enc``
(d_sae,), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in,), plus ``threshold`` (d_sae,) for JumpReLU.
SAELens encodes ``x − b_dec·apply_b_dec_to_input``; we fold that into ``b_enc``.

| SAELens architecture                        | ours                                            |
| ------------------------------------------- | ----------------------------------------------- |
| standard (ReLU)                             | relu                                            |
| topk (``rescale_acts_by_decoder_norm`` folded into the weights) | topk                        |
| jumprelu (also what a BatchTopK trainer saves) | jumprelu (our batchtopk exports as jumprelu) |
| gated, matryoshka, transcoders, others      | refused                                         |

``normalize_activations``: ``none`` as is; ``expected_average_only_in`` folds the factor of an
``activation_scaler.json`` beside the weights (without one SAELens applies nothing at run time, and
neither do we); ``constant_norm_rescale``, ``layer_norm`` and ``covariance_whitening`` rescale each
token on its own, which a linear dictionary cannot represent: refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from monosemantic.errors import UserError
from monosemantic.fsio import atomic_path, read_json, write_json
from monosemantic.interop.base import (
    ExportMeta,
    Foreign,
    check_shape,
    fill,
    load_tensors,
    need,
    thresholds_to_log,
)
from monosemantic.interop.hooks import saelens_hook
from monosemantic.sae import BatchTopKSAE, JumpReLUSAE, ReluSAE, SparseAutoencoder, TopKSAE

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
SAELENS_VERSION = "6.54.12"
"""The version whose format we write (recorded in the metadata, as SAELens does)."""


def detect(path: Path) -> bool:
    return (path / CFG).is_file() and (path / WEIGHTS).is_file()


def _settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The fields we use, from a 6.x cfg (metadata nested) or an older flat one."""
    meta = cfg.get("metadata") or {}
    arch = cfg.get("architecture") or "standard"
    act = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
    if arch == "standard" and act == "topk":  # pre-6.0 TopK: a standard SAE with a topk activation
        arch = "topk"
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    return {
        "arch": arch,
        "k": k,
        "hook": meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or "",
        "model": meta.get("model_name") or cfg.get("model_name") or "",
        "head": meta.get("hook_head_index", cfg.get("hook_head_index")),
        "normalize": cfg.get("normalize_activations") or "none",
        "centre": bool(cfg.get("apply_b_dec_to_input", True)),
        "rescale": bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        "finetuning": bool(cfg.get("finetuning_scaling_factor", False)),
        "reshape": cfg.get("reshape_activations") or "none",
    }


def read(path: Path) -> Foreign:
    """The SAELens dictionary in folder ``path``.

    Raises:
        UserError: a missing or corrupt file, or a setting we cannot represent (named).
    """
    cfg = read_json(path / CFG)
    if not isinstance(cfg, dict) or "d_in" not in cfg or "d_sae" not in cfg:
        raise UserError(f"{path / CFG} is not a SAELens config (no d_in/d_sae): is it the right folder?")
    s = _settings(cfg)
    d, n = int(cfg["d_in"]), int(cfg["d_sae"])
    if s["arch"] not in ("standard", "topk", "jumprelu"):
        raise UserError(
            f"{path}: SAELens architecture {s['arch']!r} has no equivalent here "
            "(we read standard, topk and jumprelu)"
        )
    if s["normalize"] in ("constant_norm_rescale", "layer_norm", "covariance_whitening"):
        raise UserError(
            f"{path}: normalize_activations={s['normalize']!r} rescales each token on its own, which "
            "a dictionary on raw activations cannot represent"
        )
    if s["head"] is not None or s["reshape"] != "none":
        raise UserError(f"{path}: per-head (hook_z) dictionaries are not residual-stream dictionaries")
    if s["finetuning"]:
        raise UserError(f"{path}: finetuning_scaling_factor is not supported: fold it and save again")
    tensors = load_tensors(path / WEIGHTS)
    W_enc, b_enc, W_dec, b_dec = need(tensors, ("W_enc", "b_enc", "W_dec", "b_dec"), path / WEIGHTS)
    for t, shape, what in ((W_enc, (d, n), "W_enc"), (W_dec, (n, d), "W_dec"), (b_enc, (n,), "b_enc")):
        check_shape(t, shape, what, path / WEIGHTS)
    check_shape(b_dec, (d,), "b_dec", path / WEIGHTS)
    if s["rescale"]:  # topk on hidden_pre·‖W_dec_i‖, decoded with acts/‖W_dec_i‖: fold both
        norms = W_dec.norm(dim=-1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    sae: SparseAutoencoder
    if s["arch"] == "standard":
        sae = ReluSAE(d, n)
    elif s["arch"] == "topk":
        if not s["k"]:
            raise UserError(f"{path / CFG} is a topk SAE without k")
        sae = TopKSAE(d, n, k=int(s["k"]))
    else:
        sae = JumpReLUSAE(d, n)
        (theta,) = need(tensors, ("threshold",), path / WEIGHTS)
        check_shape(theta, (n,), "threshold", path / WEIGHTS)
        with torch.no_grad():
            sae.log_threshold.copy_(thresholds_to_log(theta))
    fill(sae, W_enc.T, b_enc, W_dec.T, b_dec, centre=s["centre"])
    notes: dict[str, Any] = {"architecture": s["arch"], "normalize_activations": s["normalize"]}
    if s["normalize"] == "expected_average_only_in":
        scaler = path / "activation_scaler.json"
        factor = (read_json(scaler) or {}).get("scaling_factor") if scaler.is_file() else None
        if factor:
            sae.fold_input_scale(float(factor))
        notes["scaling_factor"] = factor
    return Foreign(sae, s["hook"], s["model"], "saelens", notes)


def write(sae: SparseAutoencoder, meta: ExportMeta, out: Path) -> list[Path]:
    """Write ``sae`` as SAELens's ``save_model`` does, loadable by ``SAE.load_from_disk(out)``.
    BatchTopK becomes jumprelu with one threshold for every feature, as SAELens saves its own.

    Raises:
        UserError: an architecture SAELens has no inference form for.
    """
    d, n = sae.d_model, sae.n_features
    tensors = {
        "W_enc": sae.W_enc.detach().T,
        "b_enc": sae.b_enc.detach(),
        "W_dec": sae.W_dec.detach().T,
        "b_dec": sae.b_dec.detach(),
    }
    extra: dict[str, Any] = {}
    if isinstance(sae, BatchTopKSAE):
        arch = "jumprelu"
        # our eval rule is pre > θ and pre > 0; θ < 0 (never estimated) is a plain ReLU
        tensors["threshold"] = sae.threshold.detach().clamp(min=0).expand(n)
    elif isinstance(sae, TopKSAE):
        arch, extra = "topk", {"k": sae.k, "rescale_acts_by_decoder_norm": False}
    elif isinstance(sae, JumpReLUSAE):
        arch, tensors["threshold"] = "jumprelu", sae.thresholds().detach()
    elif isinstance(sae, ReluSAE):
        arch = "standard"
    else:
        raise UserError(f"architecture {sae.arch!r} has no SAELens equivalent")
    cfg = {
        "d_in": d,
        "d_sae": n,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,  # our encoder reads raw x; b_dec stays out of it
        "normalize_activations": "none",
        "reshape_activations": "none",
        **extra,
        "metadata": {
            "sae_lens_version": SAELENS_VERSION,
            "sae_lens_training_version": SAELENS_VERSION,
            "model_name": meta.model,
            "hook_name": saelens_hook(meta.layer),
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": meta.seq_len,
            "exported_by": "monosemantic",
            "monosemantic_name": meta.name,
        },
        "architecture": arch,
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS) as tmp:
        save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(tmp))
    write_json(out / CFG, cfg, checksum=False)
    return [out / CFG, out / WEIGHTS]
