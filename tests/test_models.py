from __future__ import annotations

from pathlib import Path

import pytest
import torch

from monosemantic.errors import UserError
from monosemantic.models import (
    LoadedModel,
    capture_residual,
    edit_residual,
    find_blocks,
    load_model,
    next_token_loss,
)
from tests.helpers import save_tiny, tiny_model, tiny_tokenizer


def _loaded(family: str) -> LoadedModel:
    model = tiny_model(family).eval()
    n = model.config.num_hidden_layers
    return LoadedModel(
        model,
        tiny_tokenizer(),
        family,
        find_blocks(model, n),
        model.config.hidden_size,
        is_causal=family != "bert",
    )


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("layer", [0, 2, 3])
def test_capture_equals_hidden_states(family: str, layer: int) -> None:
    lm = _loaded(family)
    ids = torch.randint(2, 60, (3, 16))
    expected = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[layer]
    torch.testing.assert_close(capture_residual(lm, layer, ids), expected)


def test_capture_stops_before_later_blocks() -> None:
    lm = _loaded("llama")
    ran: list[int] = []
    for i, block in enumerate(lm.blocks):
        block.register_forward_hook(lambda *_a, i=i: ran.append(i))
    capture_residual(lm, 2, torch.randint(2, 60, (1, 8)))
    assert ran == [0, 1]


def test_identity_edit_keeps_loss_and_zero_edit_changes_it() -> None:
    lm = _loaded("gpt2")
    ids = torch.randint(2, 60, (2, 16))
    clean = next_token_loss(lm, ids)
    with edit_residual(lm, 2, lambda h: h):
        same = next_token_loss(lm, ids)
    with edit_residual(lm, 2, torch.zeros_like):
        zeroed = next_token_loss(lm, ids)
    torch.testing.assert_close(same, clean)
    assert not torch.isclose(zeroed, clean)
    # the hook is gone after the block
    torch.testing.assert_close(next_token_loss(lm, ids), clean)


def test_load_model_from_folder(tmp_path: Path) -> None:
    lm = load_model(str(save_tiny("gpt2", tmp_path / "gpt2")))
    assert (lm.n_layers, lm.d_model, lm.is_causal) == (4, 32, True)
    enc = load_model(str(save_tiny("bert", tmp_path / "bert")))
    assert not enc.is_causal
    with pytest.raises(UserError, match="not a causal"):
        next_token_loss(enc, torch.randint(2, 60, (1, 8)))


def test_bad_model_and_layer(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        load_model(str(tmp_path / "empty"))
    lm = _loaded("llama")
    with pytest.raises(UserError, match="between 0 and 3"):
        lm.check_layer(4)


@pytest.mark.slow
def test_default_model_capture_matches_hidden_states() -> None:
    lm = load_model("default")
    assert (lm.n_layers, lm.d_model) == (30, 576)
    ids = lm.tokenizer(
        "Albert Einstein was born in Ulm; Paris is the capital of France.", return_tensors="pt"
    ).input_ids
    expected = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[15]
    got = capture_residual(lm, 15, ids)
    torch.testing.assert_close(got, expected)
    norms = got[0].norm(dim=-1)
    assert norms[0] > 20 * norms[1:].median()  # the attention sink we exclude from the store
