"""Training on planted data: recovery of the planted directions, resume to the same weights, and
per-architecture defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from monosemantic.config import TrainConfig
from monosemantic.dictionary import load_dictionary
from monosemantic.train import train
from tests.helpers import planted, train_with_a_stop


@pytest.mark.slow
def test_planted_dictionary_is_recovered(tmp_path: Path) -> None:
    dirs, batches_from = planted()
    cfg = TrainConfig(
        sizes=[128], l1_coeff=0.3, lr=3e-3, batch_size=512, epochs=1.0, log_every=50, checkpoint_every=10_000
    )
    train(cfg, batches_from, run_dir=tmp_path, d_model=32, n_train_tokens=512 * 1500, scale=1.0, meta={})
    sae, _ = load_dictionary(tmp_path / "saes" / "relu-128")
    dec = sae.W_dec / sae.W_dec.norm(dim=0, keepdim=True)
    best = (dirs @ dec).max(dim=1).values
    assert (best >= 0.9).float().mean() >= 0.9, best.sort().values[:10]


def test_resume_reaches_the_same_weights(tmp_path: Path) -> None:
    _, batches_from = planted(seed=3)
    cfg = TrainConfig(
        sizes=[32, 64], batch_size=512, epochs=1.0, log_every=5, checkpoint_every=7, l1_coeff=0.3
    )
    steps = 30
    a, b = tmp_path / "a", tmp_path / "b"
    train(cfg, batches_from, run_dir=a, d_model=32, n_train_tokens=512 * steps, scale=2.0, meta={})

    train_with_a_stop(cfg, batches_from, b, stop_at=17, n_train_tokens=512 * steps)
    assert not (b / "saes" / "relu-32" / "sae.safetensors").exists()
    assert torch.load(b / "saes" / "relu-32" / "state.pt", weights_only=True)["step"] == 14
    train(cfg, batches_from, run_dir=b, d_model=32, n_train_tokens=512 * steps, scale=2.0, meta={})
    for n in (32, 64):
        sa, _ = load_dictionary(a / "saes" / f"relu-{n}")
        sb, _ = load_dictionary(b / "saes" / f"relu-{n}")
        for (k, va), vb in zip(sa.state_dict().items(), sb.state_dict().values(), strict=True):
            torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
        logs = (b / "saes" / f"relu-{n}" / "log.jsonl").read_text().splitlines()
        assert [int(line.split('"step": ')[1].split(",")[0]) for line in logs] == [5, 10, 15, 20, 25, 30]


def test_learning_rate_defaults_per_architecture() -> None:
    assert TrainConfig(arch="topk").lr == 1e-3  # 3e-3 left 14% of TopK-16384 dead on the demo
    assert TrainConfig(arch="relu").lr == TrainConfig(arch="batchtopk").lr == 3e-3
    assert TrainConfig(arch="topk", lr=3e-3).lr == 3e-3  # an explicit --lr wins


def test_keeping_freed_memory_is_idempotent_and_keeps_tensors_intact() -> None:
    """glibc's setting (memory.keep_freed_memory) can be applied again, and large blocks freed and
    allocated again under it hold what is written to them (False off glibc, where nothing changes)."""
    import platform

    from monosemantic.memory import keep_freed_memory

    first, second = keep_freed_memory(), keep_freed_memory()
    assert first == second
    if platform.libc_ver()[0] == "glibc":
        assert first
    for i in range(3):  # 40 MB each: above glibc's largest mmap threshold
        t = torch.full((10_000_000,), float(i))
        assert t.sum().item() == pytest.approx(1e7 * i)
        del t


def test_a_topk_checkpoint_recorded_with_the_old_dec_init_norm_resumes(tmp_path: Path) -> None:
    """A TopK-family checkpoint written before dec_init_norm resolved per architecture holds 0.1
    for a decoder initialised at norm 1: it resumes (and a real change of the setting does not)."""
    from monosemantic.errors import UserError
    from monosemantic.integrity import load_checkpoint, write_checkpoint

    _, batches_from = planted(seed=3)
    cfg = TrainConfig(arch="topk", k=4, sizes=[64], batch_size=512, log_every=5, checkpoint_every=7)
    assert cfg.dec_init_norm == 1.0
    train_with_a_stop(cfg, batches_from, tmp_path, stop_at=10, n_train_tokens=512 * 20)
    path = tmp_path / "saes" / "topk-64" / "state.pt"
    state = load_checkpoint(path, "cpu", "")
    state["cfg"]["dec_init_norm"] = 0.1  # as the version before wrote it
    write_checkpoint(path, state)
    with pytest.raises(UserError, match="another configuration"):
        moved = TrainConfig(arch="topk", k=4, sizes=[64], batch_size=512, log_every=5, dec_init_norm=0.5)
        train(moved, batches_from, run_dir=tmp_path, d_model=32, n_train_tokens=512 * 20, scale=2.0, meta={})
    train(cfg, batches_from, run_dir=tmp_path, d_model=32, n_train_tokens=512 * 20, scale=2.0, meta={})
    assert (tmp_path / "saes" / "topk-64" / "sae.safetensors").is_file()
