from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from monosemantic.sae import LossContext, ReluSAE, relu_sae_loss
from monosemantic.train import l1_at, lr_at


def _sae(d: int = 8, n: int = 16, seed: int = 0) -> ReluSAE:
    sae = ReluSAE(d, n)
    sae.initialize(torch.Generator().manual_seed(seed), dec_norm=0.1)
    with torch.no_grad():  # move away from the init so biases and norms matter
        for p in sae.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)))
    return sae


def test_loss_matches_hand_computation() -> None:
    sae = _sae()
    x = torch.randn(5, 8)
    out = sae(x)
    lam = 3.0
    total = 0.0
    with torch.no_grad():
        for b in range(5):
            f = [max(0.0, float(sae.W_enc[i] @ x[b] + sae.b_enc[i])) for i in range(16)]
            xhat = [float(sae.b_dec[j] + sum(f[i] * sae.W_dec[j, i] for i in range(16))) for j in range(8)]
            err = sum((x[b, j].item() - xhat[j]) ** 2 for j in range(8))
            pen = sum(f[i] * math.sqrt(sum(float(sae.W_dec[j, i]) ** 2 for j in range(8))) for i in range(16))
            total += err + lam * pen
    lo = relu_sae_loss(x, out, sae.decoder_norms(), lam)
    assert lo.loss.item() == pytest.approx(total / 5, rel=1e-5)
    assert (lo.mse + lam * lo.sparsity).item() == pytest.approx(lo.loss.item(), rel=1e-6)


def test_init_follows_the_recipe() -> None:
    sae = ReluSAE(8, 32)
    sae.initialize(torch.Generator().manual_seed(0), dec_norm=0.1)
    torch.testing.assert_close(sae.decoder_norms(), torch.full((32,), 0.1))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    assert sae.b_enc.abs().sum() == 0 and sae.b_dec.abs().sum() == 0


def test_folding_the_scale_keeps_features_and_reconstruction() -> None:
    sae = _sae()
    raw = 37.0 * torch.randn(20, 8)
    scale = 1 / 37.0
    before = sae(raw * scale)
    sae.fold_input_scale(scale)
    after = sae(raw)
    torch.testing.assert_close(after.feats, before.feats)
    torch.testing.assert_close(after.recon, before.recon / scale)


def test_schedules() -> None:
    total = 1000
    assert l1_at(0, total, 5.0, 0.05) == 0.0
    assert l1_at(25, total, 5.0, 0.05) == pytest.approx(2.5)
    assert l1_at(50, total, 5.0, 0.05) == 5.0 and l1_at(999, total, 5.0, 0.05) == 5.0
    assert lr_at(0, total, 1e-3, 0.2) == 1e-3 and lr_at(799, total, 1e-3, 0.2) == 1e-3
    assert lr_at(900, total, 1e-3, 0.2) == pytest.approx(0.5e-3)
    assert lr_at(1000, total, 1e-3, 0.2) == 0.0


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_folding_holds_for_any_scale(scale: float, seed: int) -> None:
    sae = _sae(seed=seed)
    raw = torch.randn(6, 8, generator=torch.Generator().manual_seed(seed)) / scale
    before = sae(raw * scale)
    sae.fold_input_scale(scale)
    after = sae(raw)
    torch.testing.assert_close(after.feats, before.feats, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after.recon * scale, before.recon, rtol=1e-4, atol=1e-5)


def test_center_on_starts_pre_activations_at_the_data_mean() -> None:
    sae = _sae()
    mean, x = torch.randn(8), torch.randn(5, 8)
    sae.center_on(mean)
    pre, _ = sae.encode(x)
    torch.testing.assert_close(pre, (x - mean) @ sae.W_enc.T)
    torch.testing.assert_close(sae.decode(torch.zeros(16)), mean)


@pytest.mark.parametrize("sparse_below", [0.0, 2.0])
@pytest.mark.parametrize("silent", [0, 5, 16])
def test_fast_training_step_has_the_reference_gradients(silent: int, sparse_below: float) -> None:
    """The fast step (``sae/relu_step.py``: one autograd function over the columns that fired, or
    over the nonzero activations as CSR products with ``sparse_below`` > 1) against plain autograd,
    with ``silent`` of the 16 features pushed below zero on every token (gathered columns when some
    are silent, the whole matrix when none is, no nonzero at all when all are), on (B, T, d) input."""
    sae = _sae()
    sae.sparse_below = sparse_below
    with torch.no_grad():
        sae.b_enc[:silent] = -100.0
    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(5))

    def grads(fast: bool) -> tuple[object, list[torch.Tensor]]:
        sae.fast = fast
        sae.zero_grad(set_to_none=True)
        out = sae(x)
        lo = sae.loss(x, out, LossContext(2.5))
        lo.loss.backward()
        assert (out.penalty is not None) == fast
        return (lo, out), [p.grad.clone() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]

    ((fast, fast_out), fast_grads), ((ref, ref_out), ref_grads) = grads(True), grads(False)
    torch.testing.assert_close(fast_out.feats, ref_out.feats, rtol=0, atol=0)
    torch.testing.assert_close(fast_out.pre_acts, ref_out.pre_acts)
    torch.testing.assert_close(fast_out.recon, ref_out.recon)
    for a, b in zip((fast.loss, fast.mse, fast.sparsity), (ref.loss, ref.mse, ref.sparsity), strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if silent:
        assert fast_grads[0][:silent].abs().max() == 0 and fast_grads[2][:, :silent].abs().max() == 0


def test_the_input_keeps_its_gradient() -> None:
    """A caller differentiating with respect to x gets the plain forward, whose graph reaches x."""
    sae = _sae()
    x = torch.randn(5, 8, requires_grad=True)
    out = sae(x)
    assert out.penalty is None
    out.recon.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_sparse_relu_steps_train_like_the_dense_ones(tmp_path: Path) -> None:
    """Whole training steps with the ReLU step forced sparse (CSR products, firing counts from its
    nonzero entries) and forced dense, from one initialisation on the same batches: the same
    statistics each step (L0, dead fraction exactly) and the same weights after them."""
    from monosemantic.config import TrainConfig
    from monosemantic.train import make_states, train_step

    cfg = TrainConfig(arch="relu", sizes=[64], batch_size=32, l1_coeff=3.0, lr=1e-3, seed=1)
    runs = []
    for below in (0.0, 2.0):
        (state,) = make_states(cfg, 12, tmp_path / str(below), "cpu")
        assert isinstance(state.sae, ReluSAE)
        state.sae.sparse_below = below
        g = torch.Generator().manual_seed(3)
        stats = [train_step(state, torch.randn(32, 12, generator=g), cfg, 20) for _ in range(6)]
        runs.append((stats, state))
    (dense_stats, dense), (sparse_stats, sparse) = runs
    assert 0 < sparse_stats[-1]["l0"] < 64
    for a, b in zip(dense_stats, sparse_stats, strict=True):
        assert a["l0"] == b["l0"] and a["dead_fraction"] == b["dead_fraction"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for name, p in dense.sae.named_parameters():
        torch.testing.assert_close(p, dict(sparse.sae.named_parameters())[name], rtol=1e-4, atol=1e-6)
    assert torch.equal(dense.since_fired, sparse.since_fired)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_dictionaries_keep_the_dense_relu_step(dtype: torch.dtype) -> None:
    """The CPU has no float16 / bfloat16 sampled CSR product: a half-precision dictionary whose
    activations are sparse trains through the dense fast step, with the reference's gradients."""
    sae = _sae(n=64)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # about a tenth of the activations nonzero: the sparse step's range
        sae.b_enc.sub_(torch.quantile(sae.encode(x)[0].flatten(), 0.9))
    sae, x = sae.to(dtype), x.to(dtype)
    grads = []
    for fast in (True, False):
        sae.fast = fast
        sae.zero_grad(set_to_none=True)
        out = sae(x)
        assert 0 < int((out.feats > 0).sum()) < 0.2 * out.feats.numel()
        sae.loss(x, out, LossContext(2.5)).loss.backward()
        grads.append([p.grad.float() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
