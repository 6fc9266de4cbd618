"""sparsify (EleutherAI, ``eai-sparsify`` 1.3.x) on disk: one folder per hookpoint with ``cfg.json``
(the ``SparseCoderConfig`` plus ``d_in``) and ``sae.safetensors``; the training run's
``config.json`` one level up may name the model.

Source: ``sparsify/sparse_coder.py`` (``SparseCoder.save_to_disk``, ``load_from_disk``, ``encode``:
``topk(ReLU(encoder(x − b_dec)))``), ``sparsify/config.py``. Weights: ``encoder.weight`` (n, d),
``encoder.bias`` (n,), ``W_dec`` (n, d), ``b_dec`` (d,). A TopK SAE maps to our topk exactly (ReLU
before or after the top-k selects the same values). Transcoders (``transcode``), skip connections
(``W_skip``) and the ``groupmax`` activation have no equivalent here and are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from monosemantic.errors import UserError
from monosemantic.fsio import atomic_path, read_json, write_json
from monosemantic.interop.base import ExportMeta, Foreign, check_shape, fill, load_tensors, need
from monosemantic.interop.hooks import module_hook
from monosemantic.sae import SparseAutoencoder, TopKSAE

CFG, WEIGHTS = "cfg.json", "sae.safetensors"


def detect(path: Path) -> bool:
    if not ((path / CFG).is_file() and (path / WEIGHTS).is_file()):
        return False
    cfg = read_json(path / CFG)
    return isinstance(cfg, dict) and "d_in" in cfg and "arch" not in cfg  # ours has "arch"


def read(path: Path) -> Foreign:
    """The sparsify dictionary in folder ``path`` (a hookpoint folder; its name is the hook).

    Raises:
        UserError: a missing or corrupt file, or a setting we cannot represent (named).
    """
    cfg = read_json(path / CFG)
    d = int(cfg["d_in"])
    n = int(cfg.get("num_latents") or d * int(cfg.get("expansion_factor", 32)))
    for flag, what in (("transcode", "a transcoder"), ("skip_connection", "a skip connection (W_skip)")):
        if cfg.get(flag):
            raise UserError(f"{path}: sparsify {what} has no equivalent here (we read TopK SAEs)")
    if cfg.get("activation", "topk") != "topk":
        raise UserError(f"{path}: sparsify activation {cfg['activation']!r} has no equivalent (we read topk)")
    tensors = load_tensors(path / WEIGHTS)
    W_enc, b_enc, W_dec, b_dec = need(tensors, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), path)
    for t, shape, what in (
        (W_enc, (n, d), "encoder.weight"),
        (W_dec, (n, d), "W_dec"),
        (b_dec, (d,), "b_dec"),
    ):
        check_shape(t, shape, what, path / WEIGHTS)
    check_shape(b_enc, (n,), "encoder.bias", path / WEIGHTS)
    sae = fill(TopKSAE(d, n, k=int(cfg.get("k", 32))), W_enc, b_enc, W_dec.T, b_dec, centre=True)
    run_cfg = path.parent / "config.json"
    run = read_json(run_cfg) if run_cfg.is_file() else {}
    model = run.get("model", "") if isinstance(run, dict) else ""
    notes: dict[str, Any] = {"k": cfg.get("k"), "normalize_decoder": cfg.get("normalize_decoder")}
    return Foreign(sae, path.name, str(model or ""), "sparsify", notes)


def write(sae: SparseAutoencoder, meta: ExportMeta, out: Path) -> list[Path]:
    """Write ``sae`` into ``out/<hookpoint>/`` as ``SparseCoder.save_to_disk`` does, with the run's
    ``config.json`` naming the model; loadable by ``SparseCoder.load_from_disk(out/<hookpoint>)``.

    Raises:
        UserError: not a TopK dictionary (sparsify's only inference form), or layer 0.
    """
    if type(sae) is not TopKSAE:
        raise UserError(f"sparsify holds TopK dictionaries only, not {sae.arch!r}: export a topk dictionary")
    hook = module_hook(meta.layer)
    folder = out / hook
    folder.mkdir(parents=True, exist_ok=True)
    # sparsify encodes x − b_dec: b_enc absorbs W_enc b_dec so that the pre-activations stay ours
    W_enc, b_dec = sae.W_enc.detach(), sae.b_dec.detach()
    tensors = {
        "encoder.weight": W_enc,
        "encoder.bias": sae.b_enc.detach() + W_enc @ b_dec,
        "W_dec": sae.W_dec.detach().T,
        "b_dec": b_dec,
    }
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(tmp))
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, sae.n_features // sae.d_model),
        "normalize_decoder": True,
        "num_latents": sae.n_features,
        "k": sae.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": sae.d_model,
    }
    write_json(folder / CFG, cfg, checksum=False)
    write_json(
        out / "config.json",
        {"model": meta.model, "hookpoints": [hook], "exported_by": "monosemantic"},
        checksum=False,
    )
    return [folder / CFG, folder / WEIGHTS, out / "config.json"]
