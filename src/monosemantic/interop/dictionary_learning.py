"""dictionary_learning (Marks et al., PyPI ``dictionary-learning``) on disk: a folder with
``ae.pt`` (a torch state dict) and ``config.json`` whose ``trainer`` entry names the class
(``dict_class``), the model (``lm_name``), the ``layer`` and the ``submodule_name``.

Source: ``dictionary_learning/utils.py`` (``load_dictionary``), ``dictionary.py`` (``AutoEncoder``,
``JumpReluAutoEncoder``, ``AutoEncoderNew``), ``trainers/top_k.py`` (``AutoEncoderTopK``),
``trainers/batch_top_k.py`` (``BatchTopKSAE``), ``training.py`` (writes config.json).

| dict_class                        | encode                                   | ours      |
| --------------------------------- | ---------------------------------------- | --------- |
| AutoEncoder                       | ReLU(encoder(x − bias))                  | relu      |
| AutoEncoderNew                    | ReLU(encoder(x))                         | relu      |
| AutoEncoderTopK                   | TopK(ReLU(encoder(x − b_dec)))           | topk      |
| BatchTopKSAE                      | ReLU(...)·1[ReLU(...) > θ] (inference)   | batchtopk |
| JumpReluAutoEncoder               | ReLU(pre·1[pre > θ]), pre = x W_enc + b  | jumprelu  |
| GatedAutoEncoder, Matryoshka...   | refused                                  |           |

Its submodule is the output of block ``layer`` (``model.gpt_neox.layers[layer]``), our layer + 1.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from monosemantic.errors import UserError
from monosemantic.fsio import atomic_path, read_json, write_json
from monosemantic.interop.base import ExportMeta, Foreign, check_shape, fill, need, thresholds_to_log
from monosemantic.interop.hooks import layer_of_hook, module_hook
from monosemantic.sae import BatchTopKSAE, JumpReLUSAE, ReluSAE, SparseAutoencoder, TopKSAE

CFG, WEIGHTS = "config.json", "ae.pt"
CLASSES = ("AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder")


def detect(path: Path) -> bool:
    return (path / CFG).is_file() and (path / WEIGHTS).is_file()


def _load_state(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"{path} is corrupt ({str(e).splitlines()[0]}): download or export it again") from e
    if not isinstance(state, dict):
        raise UserError(f"{path} holds no state dict: is it a dictionary_learning ae.pt?")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _hook(trainer: dict[str, Any]) -> str:
    """The submodule as a hook name we map: its own name when we know it, else block ``layer``'s
    output."""
    name = str(trainer.get("submodule_name") or "")
    try:
        layer_of_hook(name)
        return name
    except UserError:
        layer = trainer.get("layer")
        return f"layers.{layer}" if layer is not None else name


def read(path: Path) -> Foreign:
    """The dictionary_learning dictionary in folder ``path``.

    Raises:
        UserError: a missing or corrupt file, or a class we cannot represent (named).
    """
    trainer = (read_json(path / CFG) or {}).get("trainer") or {}
    cls = trainer.get("dict_class", "")
    if cls not in CLASSES:
        raise UserError(
            f"{path}: dictionary_learning class {cls!r} has no equivalent here (we read {', '.join(CLASSES)})"
        )
    state = _load_state(path / WEIGHTS)
    where = path / WEIGHTS
    sae: SparseAutoencoder
    if cls in ("AutoEncoder", "AutoEncoderNew"):
        W_enc, b_enc, W_dec = need(state, ("encoder.weight", "encoder.bias", "decoder.weight"), where)
        n, d = W_enc.shape
        b_dec = state["bias"] if cls == "AutoEncoder" else need(state, ("decoder.bias",), where)[0]
        sae = fill(ReluSAE(d, n), W_enc, b_enc, W_dec, b_dec, centre=cls == "AutoEncoder")
    elif cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        W_enc, b_enc, W_dec, b_dec = need(
            state, ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec"), where
        )
        n, d = W_enc.shape
        k = int(trainer.get("k") or state.get("k", torch.tensor(32)).item())
        if cls == "AutoEncoderTopK":
            sae = TopKSAE(d, n, k=k)
        else:
            sae = BatchTopKSAE(d, n, k=k)
            with torch.no_grad():
                sae.threshold.copy_(state.get("threshold", torch.tensor(-1.0)).float())
        fill(sae, W_enc, b_enc, W_dec, b_dec, centre=True)
    else:  # JumpReluAutoEncoder
        W_enc, b_enc, W_dec, b_dec, theta = need(
            state, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), where
        )
        d, n = W_enc.shape
        sae = JumpReLUSAE(d, n)
        with torch.no_grad():
            sae.log_threshold.copy_(thresholds_to_log(theta))
        fill(sae, W_enc.T, b_enc, W_dec.T, b_dec, centre=False)
    check_shape(sae.W_dec, (sae.d_model, sae.n_features), "the decoder", where)
    dim = trainer.get("activation_dim")
    if dim is not None and int(dim) != sae.d_model:
        raise UserError(f"{where} has width {sae.d_model} but {path / CFG} says activation_dim {dim}")
    notes = {"dict_class": cls, "trainer_class": trainer.get("trainer_class")}
    return Foreign(sae, _hook(trainer), str(trainer.get("lm_name") or ""), "dictionary_learning", notes)


def write(sae: SparseAutoencoder, meta: ExportMeta, out: Path) -> list[Path]:
    """Write ``sae`` as dictionary_learning's trainers do, loadable by
    ``dictionary_learning.utils.load_dictionary(out, device)``.

    Raises:
        UserError: layer 0 (no block output to name).
    """
    module_hook(meta.layer)  # refuses layer 0
    W_enc, b_enc, W_dec, b_dec = (p.detach().float() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    centred_bias = b_enc + W_enc @ b_dec  # their encoders read x − b_dec
    state: dict[str, Tensor]
    extra: dict[str, Any] = {}
    if isinstance(sae, JumpReLUSAE):
        cls = "JumpReluAutoEncoder"
        state = {
            "W_enc": W_enc.T,
            "b_enc": b_enc,
            "W_dec": W_dec.T,
            "b_dec": b_dec,
            "threshold": sae.thresholds(),
        }
    elif isinstance(sae, TopKSAE):  # and BatchTopK
        cls = "BatchTopKSAE" if isinstance(sae, BatchTopKSAE) else "AutoEncoderTopK"
        threshold = sae.threshold.detach().float() if isinstance(sae, BatchTopKSAE) else torch.tensor(-1.0)
        state = {
            "k": torch.tensor(sae.k, dtype=torch.int),
            "threshold": threshold,
            "decoder.weight": W_dec,
            "encoder.weight": W_enc,
            "encoder.bias": centred_bias,
            "b_dec": b_dec,
        }
        extra = {"k": sae.k}
    else:
        cls = "AutoEncoder"
        state = {
            "bias": b_dec,
            "encoder.weight": W_enc,
            "encoder.bias": centred_bias,
            "decoder.weight": W_dec,
        }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS) as tmp:
        torch.save({k: v.contiguous() for k, v in state.items()}, tmp)
    trainer = {
        "dict_class": cls,
        "trainer_class": "monosemantic",
        "activation_dim": sae.d_model,
        "dict_size": sae.n_features,
        **extra,
        "layer": meta.layer - 1,
        "lm_name": meta.model,
        "submodule_name": f"resid_post_layer_{meta.layer - 1}",
    }
    cfg = {"trainer": trainer, "exported_by": "monosemantic", "name": meta.name}
    write_json(out / CFG, cfg, checksum=False)
    return [out / CFG, out / WEIGHTS]
