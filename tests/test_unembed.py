"""The residual -> logits path is the model's own for every family the README lists, and logit
effects equal what the model itself does with a residual injected after its last block."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers as tf
from torch import Tensor, nn

from monosemantic.errors import UserError
from monosemantic.features.logits import direct_logit_effects, top_logit_effects
from monosemantic.models import LoadedModel, edit_residual, find_blocks, to_model
from monosemantic.unembed import output_path_mismatch, residual_to_logits
from tests.helpers import tiny_tokenizer

V, D = 64, 64
_COMMON = {"vocab_size": V, "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 64}
_DECODER = {**_COMMON, "hidden_size": D, "intermediate_size": 128, "num_key_value_heads": 2}


def _config(family: str) -> tuple[Any, type[nn.Module]]:
    """A transformers config (4 layers, hidden 64) and its causal-LM class."""
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=V, n_positions=64, n_embd=D, n_layer=4, n_head=4), tf.GPT2LMHeadModel
    if family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(**{**_COMMON, "hidden_size": D, "intermediate_size": 128})
        return cfg, tf.GPTNeoXForCausalLM
    if family == "llama":
        return tf.LlamaConfig(**_DECODER), tf.LlamaForCausalLM
    if family == "llama-untied":
        return tf.LlamaConfig(**_DECODER, tie_word_embeddings=False), tf.LlamaForCausalLM
    if family == "mistral":
        return tf.MistralConfig(**_DECODER), tf.MistralForCausalLM
    if family == "qwen2":
        return tf.Qwen2Config(**_DECODER), tf.Qwen2ForCausalLM
    if family == "gemma":
        return tf.GemmaConfig(**_DECODER, head_dim=16), tf.GemmaForCausalLM
    if family == "gemma2":
        # a small cap, so that soft-capping changes the logits of a random model measurably
        cfg = tf.Gemma2Config(**_DECODER, head_dim=16, final_logit_softcapping=0.5)
        return cfg, tf.Gemma2ForCausalLM
    if family.startswith("opt"):
        # opt-350m: word_embed_proj_dim 512 != hidden 1024 (project_out), no final norm
        cfg = tf.OPTConfig(
            vocab_size=V, hidden_size=D, num_hidden_layers=4, ffn_dim=128, num_attention_heads=4,
            max_position_embeddings=64, word_embed_proj_dim=32, do_layer_norm_before=family == "opt-prenorm",
        )  # fmt: skip
        return cfg, tf.OPTForCausalLM
    raise ValueError(family)


FAMILIES = ["gpt2", "gpt_neox", "llama", "llama-untied", "mistral", "qwen2", "gemma", "gemma2", "opt",
            "opt-prenorm"]  # fmt: skip


def tiny_lm(family: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    cfg, cls = _config(family)
    torch.manual_seed(0)
    model = cls(cfg).eval().requires_grad_(False)
    with torch.no_grad():  # random biases and norm gains, so that a missed norm or bias shows
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    model = model.to(dtype)
    return LoadedModel(model, tiny_tokenizer(), family, find_blocks(model, 4), D, is_causal=True)


def injected_logits(lm: LoadedModel, resid: Tensor) -> Tensor:
    """The reference: the model's own logits with its last block's output replaced by ``resid``
    (B, T, d) — every step after the blocks is the model's."""

    def hook(_m: nn.Module, _args: tuple, out: Tensor | tuple) -> Tensor | tuple:
        new = to_model(lm, resid)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handle = lm.blocks[-1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            ids = torch.randint(2, V, resid.shape[:2])
            return lm.model(input_ids=ids.to(lm.device), use_cache=False).logits.float()
    finally:
        handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_to_logits_is_the_models_own_path(family: str) -> None:
    lm = tiny_lm(family)
    assert output_path_mismatch(lm) is None
    resid = 3 * torch.randn(2, 5, D)
    expected = injected_logits(lm, resid)
    torch.testing.assert_close(residual_to_logits(lm, resid), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_effects_equal_the_injected_difference(family: str) -> None:
    """OPT with word_embed_proj_dim 32 != hidden 64 failed here with a shape error."""
    lm = tiny_lm(family)
    directions = torch.randn(6, D)
    unit = directions / directions.pow(2).mean(-1, keepdim=True).sqrt()
    expected = injected_logits(lm, unit.unsqueeze(1)) - injected_logits(lm, torch.zeros(6, 1, D))
    torch.testing.assert_close(direct_logit_effects(lm, directions), expected[:, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", ["llama", "gemma2", "opt"])
def test_logit_effects_in_half_precision(family: str, dtype: torch.dtype) -> None:
    """A float32 dictionary against a float16/bfloat16 model: was "expected m1 and m2 to have the
    same dtype"; the effects match the float32 model's to the half type's precision."""
    half, full = tiny_lm(family, dtype), tiny_lm(family)
    assert output_path_mismatch(half) is None
    directions = torch.randn(5, D)  # float32, as W_dec is
    got = direct_logit_effects(half, directions)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, direct_logit_effects(full, directions), rtol=0.05, atol=0.05)
    effects = top_logit_effects(half, directions, k=3)
    assert len(effects.promoted) == 5 and all(len(p) == 3 for p in effects.promoted)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_edit_residual_accepts_a_float32_edit_on_a_half_model(dtype: torch.dtype) -> None:
    """A dictionary's float32 output spliced into a half-precision model is cast back."""
    lm = tiny_lm("llama", dtype)
    ids = torch.randint(2, V, (2, 8))
    with torch.no_grad():
        clean = lm.model(input_ids=ids).logits
        with edit_residual(lm, 2, lambda h: h.float()):
            same = lm.model(input_ids=ids).logits
    torch.testing.assert_close(same, clean)


def test_a_path_we_cannot_reproduce_is_reported() -> None:
    lm = tiny_lm("llama")
    lm.model.config.final_logit_softcapping = 0.5  # not applied by Llama's forward: we would be wrong
    problem = output_path_mismatch(lm)
    assert problem is not None and "differ from the model's own logits" in problem


def test_an_encoder_has_no_logits() -> None:
    model = tf.BertModel(tf.BertConfig(**{**_COMMON, "hidden_size": D, "intermediate_size": 128})).eval()
    lm = LoadedModel(model, tiny_tokenizer(), "bert", find_blocks(model, 4), D, is_causal=False)
    with pytest.raises(UserError, match="no unembedding"):
        direct_logit_effects(lm, torch.randn(2, D))
    assert output_path_mismatch(lm) is not None


def test_analyze_a_tiny_opt_with_a_projected_unembedding(capsys, monkeypatch, tiny_corpus, tmp_path) -> None:
    """Issue 18, case 7: OPT with word_embed_proj_dim 32 != hidden 64 (as opt-350m) failed in
    analyze's logit effects with a shape error; now its stored effects are the model's own."""
    import json
    import sqlite3

    from monosemantic.dictionary import load_dictionary
    from monosemantic.models import load_model
    from tests.helpers import cli, harvest_args

    model_dir = tmp_path / "opt"
    cfg, cls = _config("opt")
    torch.manual_seed(0)
    cls(cfg).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "run"
    assert cli(capsys, monkeypatch, *harvest_args(model_dir, tiny_corpus, out))[0] == 0
    train = ["train", "--out", out, "--sizes", "16", "--train-batch-size", "256"]
    assert cli(capsys, monkeypatch, *train)[0] == 0
    code, err = cli(capsys, monkeypatch, "analyze", out, "--before", "6", "--after", "3")
    assert code == 0, err
    con = sqlite3.connect(out / "features.sqlite")
    stored = [json.loads(p) for (p,) in con.execute("SELECT promoted FROM features ORDER BY id")]
    con.close()
    sae, _ = load_dictionary(out / "saes" / "relu-16")
    effects = direct_logit_effects(load_model(str(model_dir)), sae.W_dec.T.detach())
    for row, eff in zip(stored, effects, strict=True):
        assert [round(v, 4) for _, v in row] == [round(v, 4) for v in eff.topk(10).values.tolist()]
