from __future__ import annotations

import torch

from monosemantic.resample import resample_dead, resample_steps
from monosemantic.sae import ReluSAE


def test_dead_features_take_high_loss_input_directions() -> None:
    torch.manual_seed(0)
    sae = ReluSAE(8, 12)
    sae.initialize(torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(64, 8)
    sae(x).recon.pow(2).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    dead = torch.zeros(12, dtype=torch.bool)
    dead[[2, 7]] = True
    x[5] *= 100  # by far the worst-reconstructed input: loss² makes it the only likely pick
    assert resample_dead(sae, opt, dead, x, torch.Generator().manual_seed(1)) == 2
    target = (x[5] - sae.b_dec) / (x[5] - sae.b_dec).norm()
    for i in (2, 7):
        assert torch.allclose(sae.W_dec[:, i] / sae.W_dec[:, i].norm(), target, atol=1e-5)
        assert torch.allclose(sae.W_enc[i] / sae.W_enc[i].norm(), target, atol=1e-5)
        assert sae.b_enc[i] == 0
        assert opt.state[sae.W_enc]["exp_avg"][i].abs().sum() == 0
        assert opt.state[sae.W_dec]["exp_avg_sq"][:, i].abs().sum() == 0
    alive = ~dead
    torch.testing.assert_close(sae.W_dec[:, alive], before["W_dec"][:, alive])
    torch.testing.assert_close(sae.W_enc[alive], before["W_enc"][alive])
    alive_enc = before["W_enc"][alive].norm(dim=1).mean()
    torch.testing.assert_close(sae.W_enc[2].norm(), 0.2 * alive_enc)
    assert opt.state[sae.W_enc]["exp_avg"][alive].abs().sum() > 0


def test_nothing_dead_changes_nothing_and_schedule() -> None:
    sae = ReluSAE(4, 6)
    sae.initialize(torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(sae.parameters())
    assert (
        resample_dead(sae, opt, torch.zeros(6, dtype=torch.bool), torch.randn(8, 4), torch.Generator()) == 0
    )
    assert resample_steps(1000) == {100, 200, 300, 400}
