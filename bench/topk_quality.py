"""TopK quality after few tokens: our TopK trainer under init/recipe variants beside sparsify's, in
one process, on the same batches as compare_trainers.py, evaluated on the store's held-out split.
Run from the peers' environment with this checkout first on the path::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv-peers/bin/python bench/topk_quality.py --run-dir RUN \\
        --n 2048 --tokens 20480 --variants ours,sparsify,enc-scale

Variants (each a fresh dictionary, the same batches, LR 3e-3 decaying over the last 20%, the dead
window of compare_trainers.py): ``ours`` (the trainer as configured), ``sparsify`` (its Adam step as
compare_trainers.py drives it), and ours with other settings: ``enc=S`` (``--enc-init-norm``),
``plainenc`` (``--plain-encoder``), ``noclip`` (no gradient clipping), ``lr=X``, ``aux=A``
(``--aux-coeff``), ``auxdec`` (AuxK trains the decoder alone, as sparsify's does). Combine them with
'+', e.g. ``ours+enc=1+plainenc`` (the defaults before 2026-11-30).
Prints variance explained, silent % on the eval split and the train-time dead fraction."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_trainers  # noqa: E402

import monosemantic.sae.topk as _topk  # noqa: E402
from monosemantic.activations import ActivationStore  # noqa: E402
from monosemantic.config import TrainConfig  # noqa: E402
from monosemantic.train import dead_window, make_states, train_step  # noqa: E402

ORIG_COLUMN_ENTRIES = _topk.column_entries


def ours(job: compare_trainers.Job, d: int, spec: str, arch: str) -> compare_trainers.Trainer:
    opts = dict(part.split("=") if "=" in part else (part, "1") for part in spec.split("+")[1:])
    cfg = TrainConfig(
        arch=arch,
        sizes=[job.n_features],
        k=job.k,
        lr=float(opts.get("lr", job.lr)),
        batch_size=job.batch_size,
        lr_decay=compare_trainers.DECAY,
        dead_window=job.dead_window,
        seed=job.seed,
        grad_clip=1e30 if "noclip" in opts else 1.0,
        enc_init_norm=float(opts.get("enc", 0.0)),
        centred_encoder="plainenc" not in opts,
        device="cpu",
    )
    if "aux" in opts:
        cfg.aux_coeff = float(opts["aux"])
    (st,) = make_states(cfg, d, Path("/tmp"), "cpu")
    import monosemantic.sae.topk as topk_mod

    st.sae.aux_dense_above = 0.0 if "auxdec" in opts else st.sae.aux_dense_above
    topk_mod.column_entries = (lambda acts, *a: acts) if "auxdec" in opts else ORIG_COLUMN_ENTRIES
    if "nobdec" in opts:  # centred encoder steps, but b_dec without the encoder's gradient
        sae = st.sae

        @torch.no_grad()
        def centre() -> None:
            gw, gb = sae.W_enc.grad, sae.b_enc.grad
            if gb is not None and gw is not None:
                gw.addr_(gb, sae.b_dec, alpha=-1)
                sae.b_enc.addmv_(sae.W_enc, sae.b_dec)

        sae._centre = centre
    state = {"dead": 0.0}

    def step(x: torch.Tensor) -> None:
        if st.step == 0 and "nomean" not in opts:  # what train() does at its first step
            st.sae.center_on(x.mean(0))
        state["dead"] = train_step(st, x, cfg, job.n_steps)["dead_fraction"]

    def reconstruct(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = st.sae(x)
        return out.recon, out.feats

    t = compare_trainers.Trainer(step, reconstruct)
    t.state = state  # type: ignore[attr-defined]
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=20_480)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--arch", default="topk")
    ap.add_argument("--variants", default="ours,sparsify")
    ap.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    args = ap.parse_args()
    store = ActivationStore(Path(args.run_dir))
    d = store.d_model
    n_steps = max(1, args.tokens // args.batch_size)
    job = compare_trainers.Job(
        trainer="",
        n_features=args.n,
        run_dir=args.run_dir,
        tokens=n_steps * args.batch_size,
        batch_size=args.batch_size,
        lr=args.lr,
        l1_coeff=1.0,
        k=args.k,
        seed=args.seed,
        buffer_shards=16,
        threads=torch.get_num_threads(),
        dead_window=dead_window(TrainConfig(batch_size=args.batch_size), n_steps),
        out="",
    )
    it = store.batches(args.batch_size, job.seed, job.buffer_shards)
    batches = [next(it) for _ in range(n_steps)]
    del it
    xs = torch.cat(list(store.iter_split("eval"))) * store.scale
    print(f"n={args.n} tokens={job.tokens} steps={n_steps} dead_window={job.dead_window} lr={args.lr}")
    for spec in args.variants.split(","):
        torch.manual_seed(args.seed)
        if spec == "sparsify":
            trainer = compare_trainers.sparsify(replace(job, trainer="sparsify-topk"), d)
        else:
            trainer = ours(job, d, spec, args.arch)
        t0 = time.process_time()
        for x in batches:
            trainer.step(x)
        cpu = time.process_time() - t0
        m = compare_trainers.evaluate(trainer, xs, args.n)
        dead = getattr(trainer, "state", {}).get("dead", float("nan"))
        print(
            f"{spec:32s} VE {m['variance_explained']:.3f}  silent {m['silent_eval_pct']:5.1f}%  "
            f"train-dead {100 * dead:5.1f}%  L0 {m['l0']:.1f}  cpu {cpu:.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
