"""Hook names of other libraries -> our layer index (the residual stream ``hidden_states[L]``
entering block L, see ``models.capture_residual``).

| source name (examples)                                      | library                     | our layer |
| ----------------------------------------------------------- | --------------------------- | --------- |
| ``blocks.6.hook_resid_pre``                                 | TransformerLens / SAELens   | 6         |
| ``blocks.6.hook_resid_post``                                | TransformerLens / SAELens   | 7         |
| ``layers.6``, ``model.layers.6`` (Llama, Gemma, Mistral)    | HF modules, sparsify        | 7         |
| ``gpt_neox.layers.6`` (Pythia), ``transformer.h.6``, ``h.6`` (GPT-2) | HF modules, sparsify | 7      |
| ``resid_post_layer_6`` / ``resid_pre_layer_6``              | dictionary_learning         | 7 / 6     |

A hook on a module is its *output*, the residual stream leaving block L, which is the stream
entering block L + 1. The stream leaving the last block cannot be read here: HF models apply
their final norm to ``hidden_states[-1]``, so that layer is refused with a one-line error. Hooks
inside a block (``hook_resid_mid``, ``hook_mlp_out``, ``attn.hook_z``, ``layers.6.mlp``) read
something other than the residual stream and are refused too.
"""

from __future__ import annotations

import re

from monosemantic.errors import UserError

_PRE = [re.compile(r"^blocks\.(\d+)\.hook_resid_pre$"), re.compile(r"^resid_pre_layer_(\d+)$")]
_POST = [
    re.compile(r"^blocks\.(\d+)\.hook_resid_post$"),
    re.compile(r"^resid_post_layer_(\d+)$"),
    # the output of a block module of a Hugging Face model, by any family's module path
    re.compile(
        r"^(?:(?:base_)?model\.)?(?:model\.|gpt_neox\.|transformer\.|language_model\.)?(?:layers|h)\.(\d+)$"
    ),
]


def layer_of_hook(hook: str) -> int:
    """Our layer index for another library's hook name (see the module docstring).

    Raises:
        UserError: the hook does not read the residual stream between two blocks.
    """
    name = hook.strip()
    for pattern in _PRE:
        if m := pattern.match(name):
            return int(m.group(1))
    for pattern in _POST:
        if m := pattern.match(name):
            return int(m.group(1)) + 1
    raise UserError(
        f"hook {hook!r} does not read the residual stream between blocks (we read "
        "blocks.L.hook_resid_pre/post and block outputs such as layers.L): pass --layer to override"
    )


def check_layer(layer: int, n_layers: int, hook: str) -> int:
    """``layer`` when the model has that stream, else a one-line error.

    Raises:
        UserError: ``layer`` is past the model's last block (e.g. the last block's output).
    """
    if not 0 <= layer < n_layers:
        raise UserError(
            f"{hook!r} maps to layer {layer}, but the model has {n_layers} blocks and we read the "
            f"streams entering blocks 0..{n_layers - 1} (the last block's output is normed by HF "
            "models): pass --layer, or a model with more blocks"
        )
    return layer


def saelens_hook(layer: int) -> str:
    """The TransformerLens hook name of our layer: the stream entering block ``layer``."""
    return f"blocks.{layer}.hook_resid_pre"


def module_hook(layer: int) -> str:
    """The module path (sparsify's hookpoint) whose output is our layer: block ``layer − 1``.

    Raises:
        UserError: layer 0, the embeddings, is the output of no block.
    """
    if layer < 1:
        raise UserError(
            "layer 0 (the embeddings) is the output of no block, which sparsify and "
            "dictionary_learning name hookpoints by: export a dictionary of a later layer"
        )
    return f"layers.{layer - 1}"
