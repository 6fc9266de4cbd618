"""Configuration of every stage: one dataclass each, a docstring (``help``) per field, validated
on construction. The CLI builds its options from these fields, so a default lives in one place.
``run.toml`` in the run directory holds the resolved configuration of every stage that ran."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from monosemantic.bounds import MAX_INT, check_float, check_int, check_seed
from monosemantic.errors import UserError
from monosemantic.fsio import write_text


def _f(default: Any, help: str, *, flag: str = "", cli: bool = True, archs: tuple[str, ...] = ()) -> Any:
    """A config field: ``help`` is its option's help text; ``flag`` the option's name where it is not
    ``--`` + the field's name; ``cli=False`` keeps it off the command line (see ``options.py``);
    ``archs`` the architectures that read it (empty: all), any other refuses a value but the
    default (``check_archs``)."""
    return field(default=default, metadata={"help": help, "flag": flag, "cli": cli, "archs": archs})


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a config field: its ``flag`` metadata, else ``--`` + the name with
    dashes (a boolean's pair as ``--on/--off``)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")
SPARSITY_PENALTY = ("relu", "jumprelu")
"""The architectures whose loss has a sparsity penalty (λ, ramped up over l1_warmup)."""


def _or(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    if isinstance(f.default, tuple | list):
        return list(value) == list(f.default)
    return bool(value == f.default)


def check_archs(cfg: Any) -> None:
    """Refuse a setting of ``cfg`` (a dataclass with ``arch``) that ``cfg.arch`` does not read: a
    field whose ``archs`` leave it out must keep its default, or the option would be ignored.

    Raises:
        UserError: naming the option as typed and the architectures it applies to.
    """
    for f in dataclasses.fields(cfg):
        archs = f.metadata.get("archs")
        value = getattr(cfg, f.name)
        if not archs or cfg.arch in archs or _is_default(f, value):
            continue
        flag = flag_of(f)
        if "/" in flag:  # a boolean's --on/--off pair: the one that gives this value
            flag = flag.split("/")[0 if value else 1]
        raise UserError(
            f"{flag} applies to --arch {_or(archs)}, not {cfg.arch}: "
            "drop it or train an architecture that reads it"
        )


def for_arch(cls: type, arch: str, **values: Any) -> dict[str, Any]:
    """``values`` of ``cls``'s fields less those that ``arch`` does not read (for code that sets
    them for whichever architecture it trains)."""
    fields = {f.name: f.metadata.get("archs", ()) for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if not fields[k] or arch in fields[k]}


@dataclass
class HarvestConfig:
    model: str = _f("default", "model: 'default' (embedded SmolLM2-135M), a folder, a .gguf file or a hub id")
    layer: int = _f(-1, "residual stream entering this block (hidden_states[L]); -1 = the middle layer")
    corpus: str = _f("default", "text: 'default' (embedded), a file, folder, glob, .jsonl, or hf:NAME")
    seq_len: int = _f(128, "tokens per packed sequence (position 0 is excluded from the store)")
    n_tokens: int = _f(200_000, "training activations to harvest", flag="--tokens")
    n_eval_tokens: int = _f(20_000, "held-out activations to harvest for evaluation", flag="--eval-tokens")
    outlier_ratio: float = _f(
        10.0,
        "mark activations with a norm above this multiple of the shard median as "
        "outliers (attention sinks past position 0), left out of training and metrics",
    )
    eval_fraction: float = _f(0.05, "fraction of corpus documents held out for evaluation (by hash)")
    batch_size: int = _f(16, "sequences per forward pass")
    shard_tokens: int = _f(32_768, "activations per shard file (the unit of resume)")
    on_the_fly: bool = _f(
        False,
        "train straight from the model (no training shards); the store keeps only "
        "held-out activations for evaluation",
        cli=False,
    )
    window_seqs: int = _f(256, "on the fly: sequences harvested and shuffled together")
    store_dtype: str = _f("float16", "dtype of stored activations: float16, bfloat16 or float32")
    device: str = _f("auto", "cpu, cuda, cuda:1 ...; auto picks cuda when available")
    dtype: str = _f("float32", "model dtype (bf16 matmuls are ~400x slower on CPUs: keep float32 there)")

    def __post_init__(self) -> None:
        check_int("--layer", self.layer, -1, hint=" (a block index from 0, or -1 for the middle layer)")
        check_int("--seq-len", self.seq_len, 2, hint=" (position 0 is excluded)")
        check_int("--tokens", self.n_tokens, 1)
        check_int("--eval-tokens", self.n_eval_tokens, 0)
        if self.on_the_fly and self.n_eval_tokens <= 0:
            raise UserError("on-the-fly training needs --eval-tokens > 0 (they also set the normalisation)")
        check_float("--outlier-ratio", self.outlier_ratio, 1.0, lo_open=True)
        check_float("--eval-fraction", self.eval_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        check_int("--batch-size", self.batch_size, 1)
        check_int("--shard-tokens", self.shard_tokens, 1)
        check_int("--window-seqs", self.window_seqs, 1)
        if self.store_dtype not in ("float16", "bfloat16", "float32"):
            raise UserError("--store-dtype must be float16, bfloat16 or float32")


DEFAULT_LR = {"topk": 1e-3}
"""Learning rates that differ from 3e-3 by architecture: on the demo, TopK at 3e-3 left 14% of
16,384 latents dead even with AuxK, none at 1e-3 at the same variance explained
(docs/architectures.md); BatchTopK and JumpReLU did better at 3e-3."""

TOPK_ENC_INIT_NORM = 0.5
DEFAULT_ENC_INIT_NORM = dict.fromkeys(TOPK_FAMILY, TOPK_ENC_INIT_NORM)
"""Encoder row norms at init that differ from the decoder's by architecture: the TopK family's
decoder columns have norm 1, and encoder rows of norm 1 (W_enc = W_decᵀ, Gao et al.) trailed
smaller ones on the demo store at 2,048 latents after 20k tokens (variance explained, mean of seeds
0-3, centred encoder steps): norm 1 0.557, 1/sqrt(3) (sparsify's) 0.577, 0.5 0.578, 0.45 0.576
(docs/architectures.md)."""

DEFAULT_DEC_INIT_NORM = dict.fromkeys(TOPK_FAMILY, 1.0)
"""Decoder column norms at init that differ from 0.1 (Anthropic, April 2024) by architecture: the
TopK family keeps its columns at norm 1 while training (Gao et al.)."""


@dataclass
class TrainConfig:
    arch: str = _f(
        "relu",
        "dictionary architecture: relu (Anthropic, April 2024), topk, batchtopk, jumprelu, "
        "matryoshka (Matryoshka BatchTopK)",
    )
    sizes: list[int] = _f(
        (512, 2048, 16384),
        "dictionary sizes trained together from one batch stream (matryoshka: one dictionary of the "
        "largest size whose prefixes are the others)",
    )
    l1_coeff: float = _f(
        1.0,
        "lambda: weight of the sparsity penalty (relu: decoder-norm-weighted L1; jumprelu: L0)",
        archs=SPARSITY_PENALTY,
    )
    k: int = _f(32, "topk, batchtopk, matryoshka: active features per token", archs=TOPK_FAMILY)
    k_aux: int = _f(
        0,
        "topk, batchtopk, matryoshka: dead latents the AuxK loss reconstructs with (0 = d_model / 2)",
        archs=TOPK_FAMILY,
    )
    aux_coeff: float = _f(1 / 32, "topk, batchtopk, matryoshka: weight of the AuxK loss", archs=TOPK_FAMILY)
    group_sizes: list[int] = _f(
        (),
        "matryoshka: sizes of the consecutive feature groups, summing to the largest of --sizes; "
        "each prefix of groups reconstructs the input on its own, and every size in --sizes must "
        "end a group (empty = the groups between the --sizes)",
        archs=("matryoshka",),
    )
    bandwidth: float = _f(
        0.1,
        "jumprelu: width of the straight-through estimator's kernel (on the √d-normalised scale)",
        archs=("jumprelu",),
    )
    init_threshold: float = _f(0.1, "jumprelu: initial per-feature threshold", archs=("jumprelu",))
    threshold_lr_scale: float = _f(
        10.0,
        "jumprelu: learning-rate multiplier for the (log) thresholds; Adam moves log θ by about "
        "lr per step, so short runs need a larger one to let θ travel",
        archs=("jumprelu",),
    )
    preact_coeff: float = _f(
        1e-4,
        "jumprelu: weight of the pre-activation loss that pulls pre-activations below their "
        "threshold up to it (revives dead features; Anthropic, January 2025); 0 = off",
        archs=("jumprelu",),
    )
    dead_window: int = _f(
        0,
        "tokens without firing after which a feature counts as dead while training "
        "(AuxK, resampling, logs); 0 = 5% of the run, at most 10M",
    )
    resample_dead: bool = _f(
        False, "relu: resample dead features at 10/20/30/40% of training (Anthropic 2023)", archs=("relu",)
    )
    feature_parallel: bool = _f(
        False,
        "under torchrun: shard each dictionary's features over the ranks (for dictionaries too big "
        "for one device); every rank reads the whole batch, so this replaces data parallelism",
    )
    lr: float = _f(
        0.0,
        "Adam learning rate, decaying linearly to 0 over the last 20% of steps; 0 = the "
        "architecture's default (topk 1e-3, the others 3e-3)",
    )
    batch_size: int = _f(512, "activations per training step", flag="--train-batch-size")
    epochs: float = _f(1.0, "passes over the stored training activations")
    l1_warmup: float = _f(
        0.05, "fraction of steps over which lambda ramps up linearly from 0", archs=SPARSITY_PENALTY
    )
    lr_decay: float = _f(0.2, "final fraction of steps over which the LR decays linearly to 0")
    grad_clip: float = _f(1.0, "gradient clipping: max global norm")
    dec_init_norm: float = _f(
        0.0,
        "initial norm of each decoder column; 0 = the architecture's default: topk, batchtopk, "
        "matryoshka 1 (they keep it at 1 while training), the others 0.1",
    )
    enc_init_norm: float = _f(
        0.0,
        "initial norm of each encoder row (W_enc starts as the decoder's directions, transposed); "
        "0 = the architecture's default: topk, batchtopk, matryoshka 0.5, the others dec_init_norm",
    )
    centred_encoder: bool = _f(
        True,
        "topk, batchtopk, matryoshka: Adam steps the encoder as W_enc (x - b_dec) + c, Gao et al.'s "
        "parametrisation (fewer silent features early in training); the saved dictionary is plain either way",
        flag="--centred-encoder/--plain-encoder",
        archs=TOPK_FAMILY,
    )
    b_dec_init: str = _f(
        "mean",
        "decoder bias at init: 'mean' of the first batch (pre-activations start centred, as Gao et "
        "al. do with the geometric median) or 'zero'",
    )
    seed: int = _f(0, "seed for initialisation and batch order")
    checkpoint_every: int = _f(200, "steps between checkpoints (and one at the end)")
    log_every: int = _f(20, "steps between log.jsonl lines")
    buffer_shards: int = _f(16, "shards shuffled together in memory")
    device: str = _f("auto", "cpu, cuda ...; auto picks cuda when available")

    def __post_init__(self) -> None:
        self.sizes = [int(s) for s in self.sizes]
        from monosemantic.sae import ARCHITECTURES

        if self.b_dec_init not in ("mean", "zero"):
            raise UserError(f"--b-dec-init must be 'mean' or 'zero', not {self.b_dec_init!r}")
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown --arch {self.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        check_archs(self)
        if self.resample_dead and self.feature_parallel:
            raise UserError("--resample-dead does not support --feature-parallel yet: drop one of them")
        if not self.sizes or min(self.sizes) <= 0 or max(self.sizes) > MAX_INT:
            raise UserError("--sizes must be positive integers, e.g. 512,2048,16384")
        if self.lr == 0:
            self.lr = DEFAULT_LR.get(self.arch, 3e-3)
        if self.dec_init_norm == 0:
            self.dec_init_norm = DEFAULT_DEC_INIT_NORM.get(self.arch, 0.1)
        if self.enc_init_norm == 0:
            self.enc_init_norm = DEFAULT_ENC_INIT_NORM.get(self.arch, self.dec_init_norm)
        check_float("--lr", self.lr, 0.0, lo_open=True)
        check_int("--train-batch-size", self.batch_size, 1)
        check_float("--epochs", self.epochs, 0.0, 1e6, lo_open=True)
        check_float("--threshold-lr-scale", self.threshold_lr_scale, 0.0, lo_open=True)
        check_float("--l1-coeff", self.l1_coeff, 0.0)
        check_float("--preact-coeff", self.preact_coeff, 0.0)
        # A TopK dictionary with k = 0 never fires; k above the size would keep every latent.
        self._check_group_sizes()
        topk = self.arch in ("topk", "batchtopk", "matryoshka")
        check_int(
            "--k",
            self.k,
            1,
            min(self.sizes) if topk else MAX_INT,
            hint=" (active features per token, at most the smallest of --sizes)" if topk else "",
        )
        check_int("--k-aux", self.k_aux, 0, hint=" (0 = d_model / 2)")
        check_float("--aux-coeff", self.aux_coeff, 0.0)
        check_float("--bandwidth", self.bandwidth, 0.0, lo_open=True)
        check_float("--init-threshold", self.init_threshold, 0.0, lo_open=True)
        check_int("--dead-window", self.dead_window, 0, hint=" (0 = 5% of the run)")
        check_float("--l1-warmup", self.l1_warmup, 0.0, 1.0, hi_open=True)
        check_float("--lr-decay", self.lr_decay, 0.0, 1.0)
        check_float("--grad-clip", self.grad_clip, 0.0, lo_open=True)
        default = " (0 = the architecture's default)"
        check_float("--dec-init-norm", self.dec_init_norm, 0.0, 1e3, lo_open=True, hint=default)
        check_float("--enc-init-norm", self.enc_init_norm, 0.0, 1e3, lo_open=True, hint=default)
        check_seed("--seed", self.seed)
        check_int("--checkpoint-every", self.checkpoint_every, 1)
        check_int("--log-every", self.log_every, 1)
        check_int("--buffer-shards", self.buffer_shards, 1)

    def _check_group_sizes(self) -> None:
        """Matryoshka's groups: given, or the steps between the sizes; every size ends a group."""
        self.group_sizes = [int(s) for s in self.group_sizes]
        if self.arch != "matryoshka":
            return  # any given groups were refused by check_archs
        sizes = sorted(set(self.sizes))
        if not self.group_sizes:
            self.group_sizes = [b - a for a, b in zip([0, *sizes[:-1]], sizes, strict=True)]
        ends = [sum(self.group_sizes[: i + 1]) for i in range(len(self.group_sizes))]
        if min(self.group_sizes) <= 0 or ends[-1] != sizes[-1] or not set(sizes) <= set(ends):
            raise UserError(
                f"--group-sizes {','.join(map(str, self.group_sizes))} must be positive, sum to the "
                f"largest of --sizes ({sizes[-1]}) and have a group end at each of --sizes"
            )


@dataclass
class EvalConfig:
    loss_sequences: int = _f(32, "held-out sequences used for the spliced next-token loss")
    batch_size: int = _f(4096, "activations per evaluation batch")
    device: str = _f("auto", "cpu, cuda ...; auto picks cuda when available")

    def __post_init__(self) -> None:
        check_int("--loss-sequences", self.loss_sequences, 0, hint=" (0 skips the spliced loss)")
        check_int("--batch-size", self.batch_size, 1)


@dataclass
class ScalingConfig:
    arch: str = _f("relu", "dictionary architecture swept (λ and k stay fixed)")
    l1_coeff: float = _f(1.0, "relu, jumprelu: lambda, fixed across the sweep", archs=SPARSITY_PENALTY)
    k: int = _f(32, "topk, batchtopk, matryoshka: k, fixed across the sweep", archs=TOPK_FAMILY)
    levels: int = _f(4, "compute levels (IsoFLOP profiles)")
    decades: float = _f(1.5, "decades of compute between the smallest and largest level")
    min_flops: float = _f(
        0.0, "compute of the smallest level in FLOPs; 0 = 100 tokens per feature at n = d_model"
    )
    budget: float = _f(1.0, "multiplies every level's compute (raise it on a GPU)")
    sizes_per_level: int = _f(4, "dictionary sizes per profile, a factor 2 apart")
    lr: float = _f(3e-3, "base learning rate of the first level")
    lr_factor: float = _f(3.0, "ratio between neighbouring learning rates of the LR scan")
    max_extend: int = _f(2, "times a profile may grow outwards while its optimum is on the edge")
    batch_size: int = _f(128, "activations per step (small, so that small budgets still take many steps)")
    eval_tokens: int = _f(8192, "held-out activations the loss is measured on")
    seed: int = _f(0, "seed of every training")
    device: str = _f("auto", "cpu, cuda ...; auto picks cuda when available")

    def __post_init__(self) -> None:
        from monosemantic.sae import ARCHITECTURES

        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown --arch {self.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        check_archs(self)
        check_int("--levels", self.levels, 2, 50, hint=" (a law needs a span)")
        check_float("--decades", self.decades, 0.0, 15.0, lo_open=True)
        check_int("--sizes-per-level", self.sizes_per_level, 3, 40, hint=" (to locate a minimum)")
        check_float("--min-flops", self.min_flops, 0.0, 1e30, hint=" (0 = automatic)")
        check_float("--budget", self.budget, 0.0, 1e15, lo_open=True)
        check_float("--lr", self.lr, 0.0, lo_open=True)
        check_float("--lr-factor", self.lr_factor, 1.0, lo_open=True)
        check_float("--l1-coeff", self.l1_coeff, 0.0)
        check_int("--k", self.k, 1, hint=" (active features per token)")
        check_int("--max-extend", self.max_extend, 0, 20)
        check_int("--batch-size", self.batch_size, 1)
        check_int("--eval-tokens", self.eval_tokens, 1)
        check_seed("--seed", self.seed)


@dataclass
class AnalyzeConfig:
    sae: str = _f(
        "", "dictionaries to analyse, comma-separated (e.g. relu-2048); empty = every one in the run"
    )
    corpus: str = _f(
        "store",
        "'store': the run's stored activations (no model forward); else a corpus spec as for harvest "
        "('default', a file, folder, glob, .jsonl, hf:NAME), run through the model",
    )
    n_tokens: int = _f(
        0, "tokens to analyse (0 = the whole store; 200,000 for a corpus through the model)", flag="--tokens"
    )
    top_k: int = _f(20, "top-activating contexts kept per feature")
    n_samples: int = _f(
        40,
        "activating contexts sampled per feature, cut into --quantiles bands of equal count",
        flag="--samples",
    )
    n_bands: int = _f(10, "activation quantile bands the sampled contexts are cut into", flag="--quantiles")
    n_random: int = _f(20, "random contexts kept per feature where it does not fire", flag="--random")
    before: int = _f(24, "context tokens shown before the peak token")
    after: int = _f(7, "context tokens shown after the peak token")
    batch_size: int = _f(32, "sequences per batch")
    checkpoint_every: int = _f(512, "sequences between saves of the resumable state")
    seed: int = _f(0, "seed of the random samples")
    device: str = _f("auto", "cpu, cuda ...; auto picks cuda when available")

    def __post_init__(self) -> None:
        check_int("--tokens", self.n_tokens, 0, hint=" (0 = the whole store)")
        check_int("--top-k", self.top_k, 1)
        check_int("--samples", self.n_samples, 1)
        check_int("--quantiles", self.n_bands, 1)
        check_int("--random", self.n_random, 0)
        check_int("--before", self.before, 0, 4096)
        check_int("--after", self.after, 0, 4096)
        check_int("--batch-size", self.batch_size, 1)
        check_int("--checkpoint-every", self.checkpoint_every, 1)
        check_seed("--seed", self.seed)


@dataclass
class ExplainConfig:
    sae: str = _f("", "dictionary, e.g. relu-2048 (default: the largest analysed one)")
    n_features: int = _f(100, "live features to explain, drawn at random (0 = all)", flag="--features")
    ids: list[int] = _f((), "explain these features instead, e.g. 5116,12416")
    explainer_url: str = _f(
        "",
        "OpenAI-compatible endpoint (e.g. http://localhost:8080/v1) to explain and score with an LLM; "
        "default: the offline --explainer, scored with MiniLM embeddings",
    )
    llm_model: str = _f("default", "model name sent to --explainer-url")
    explainer: str = _f(
        "lexicon",
        "offline explainer: 'lexicon' (a WordNet or concept-list entry near the firing windows, chosen "
        "by how well it tells the top contexts from random text, plus the firing tokens) or 'tokens' "
        "(contrastive firing tokens only)",
    )
    seed: int = _f(0, "seed of the random choice of features")
    again: bool = _f(
        False,
        "explain the drawn --features again even where this explainer has explained them (default: "
        "leave those as they are; another --seed draws other features)",
    )

    def __post_init__(self) -> None:
        if self.explainer not in ("lexicon", "tokens"):
            raise UserError(f"--explainer {self.explainer!r} is not one of lexicon, tokens")
        self.ids = [int(i) for i in self.ids]
        check_int("--features", self.n_features, 0, hint=" (0 = all)")
        for i in self.ids:
            check_int("--ids", i, 0)
        check_seed("--seed", self.seed)


@dataclass
class CatalogConfig:
    sae: str = _f("", "dictionary, e.g. relu-2048 (default: the largest analysed one)")
    probes: str = _f("", "probe sets, .jsonl of {set, label 1/0, text} (default: the bundled catalog)")
    top: int = _f(10, "features kept per probe set")

    def __post_init__(self) -> None:
        check_int("--top", self.top, 1)


@dataclass
class ImportConfig:
    format: str = _f(
        "auto", "source format: auto (detected from the files), saelens, sparsify, dictionary_learning"
    )
    model: str = _f(
        "", "model the dictionary reads (a folder, .gguf or hub id); default: the one the source names"
    )
    layer: int = _f(-1, "our layer (hidden_states[L]); -1 = mapped from the source's hook name")
    name: str = _f("", "name of the dictionary in the run (saes/NAME); default: <arch>-<n_features>")

    def __post_init__(self) -> None:
        check_int("--layer", self.layer, -1, hint=" (-1 = from the source's hook name)")
        formats = ("auto", "saelens", "sparsify", "dictionary_learning")
        if self.format not in formats:
            raise UserError(f"unknown --format {self.format!r}: choose one of {', '.join(formats)}")
        if self.name and ("/" in self.name or self.name.startswith(".")):
            raise UserError(f"--name {self.name!r} must be a plain folder name, e.g. saelens-2048")


@dataclass
class ExportConfig:
    format: str = _f("saelens", "target: saelens, sparsify, dictionary_learning, neuronpedia")
    sae: str = _f("", "dictionary to export, e.g. topk-2048 (default: the run's only or largest one)")
    dest: str = _f("", "output folder; default: RUN/export/<format>/<sae>", flag="--to")
    vectors: bool = _f(False, "neuronpedia: include each feature's decoder direction")

    def __post_init__(self) -> None:
        formats = ("saelens", "sparsify", "dictionary_learning", "neuronpedia")
        if self.format not in formats:
            raise UserError(f"unknown --format {self.format!r}: choose one of {', '.join(formats)}")


@dataclass
class TrackingConfig:
    """Experiment tracking of train and scaling (``tracking.py``); not recorded in run.toml: it
    changes nothing on disk but the trackers' own files."""

    tensorboard: bool = _f(
        False,
        "also write the training log to TensorBoard event files under RUN/tensorboard/ "
        "(pip install tensorboard: the 'tensorboard' extra)",
    )
    wandb: str = _f(
        "",
        "also log to this Weights & Biases project (pip install wandb: the 'wandb' extra; "
        "WANDB_MODE=offline keeps the run under RUN/wandb/)",
    )


@dataclass(frozen=True)
class GenerateConfig:
    """How completions are generated, steered or not (``steer``)."""

    max_new_tokens: int = _f(32, "tokens generated per prompt, at most (fewer at the end-of-text token)")
    temperature: float = _f(0.0, "0 = greedy (deterministic); above 0, sample from softmax(logits / T)")
    seed: int = _f(0, "seed of the sampling (with --temperature above 0)")
    chat: bool = _f(False, "wrap each prompt in the tokenizer's chat template (instruct models)")
    keep_error: bool = _f(
        True,
        "keep the dictionary's error term x - decode(f) (the paper does); --drop-error: x' = decode(f')",
        flag="--keep-error/--drop-error",
    )
    steer_prompt: bool = _f(
        True,
        "edit every prompt position (the paper does); --generated-only edits only the prompt's last "
        "token and the generated ones",
        flag="--steer-prompt/--generated-only",
    )
    batch_size: int = _f(32, "prompts generated together (left-padded)")

    def __post_init__(self) -> None:
        check_int("--max-new-tokens", self.max_new_tokens, 1, 4096)
        check_float("--temperature", self.temperature, 0.0, hint=" (0 = greedy)")
        check_seed("--seed", self.seed)
        check_int("--batch-size", self.batch_size, 1, 4096)


STAGES: dict[str, type] = {
    "harvest": HarvestConfig,
    "train": TrainConfig,
    "evaluate": EvalConfig,
    "scaling": ScalingConfig,
    "analyze": AnalyzeConfig,
}


def resolve_device(device: str) -> str:
    """The device a stage runs on: ``auto`` picks cuda where torch sees a GPU, else cpu; an
    explicit one is checked here, so that a typo or a GPU this torch cannot use is a one-line
    error instead of a traceback from the first tensor moved there.

    Raises:
        UserError: not a device torch knows, or a CUDA device with no usable GPU.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or auto") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(
                f"--device {device}: this torch sees no CUDA GPU (a CPU-only build or no driver): "
                "use --device cpu or auto"
            )
        if parsed.index is not None and parsed.index >= count:
            raise UserError(f"--device {device}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return device


def read_run_config(run_dir: Path) -> dict[str, dict[str, Any]]:
    path = run_dir / "run.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is corrupt ({e}): fix or delete it") from e


def load_stage(run_dir: Path, stage: str) -> Any:
    """The configuration a stage ran with, from run.toml."""
    data = read_run_config(run_dir).get(stage)
    if data is None:
        raise UserError(f"{run_dir} has no {stage} stage yet: run `monosemantic {stage}` first")
    return STAGES[stage](**data)


# Fields that may change between a run and its resumption without invalidating what was written.
_RESUMABLE = {
    "device",
    "checkpoint_every",
    "log_every",
    "n_tokens",
    "n_eval_tokens",
    "loss_sequences",
    "feature_parallel",  # checkpoints hold the whole dictionary either way
}


def same_setting(key: str, old: Any, new: Any, arch: Any) -> bool:
    """Whether the recorded value ``old`` of a setting is the value ``new`` it resolves to now. A
    TopK-family run recorded before dec_init_norm was resolved per architecture says 0.1 for the
    norm 1 its decoder was initialised at (the family ignored the setting then): it still resumes."""
    if old == new:
        return True
    return key == "dec_init_norm" and arch in TOPK_FAMILY and old == 0.1 and new == 1.0


def record_stage(run_dir: Path, stage: str, cfg: Any, *, force: bool = False) -> None:
    """Write ``cfg`` into run.toml, refusing when an earlier run of the stage used another setting
    that changes what is on disk (unless ``force``). A dotted ``stage`` ("train.topk") nests."""
    data = read_run_config(run_dir)
    new = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    *parents, leaf = stage.split(".")
    table = data
    for key in parents:
        table = table.setdefault(key, {})
    old = table.get(leaf)
    if old is not None and not force:
        arch = new.get("arch")
        diff = [k for k in new if k not in _RESUMABLE and not same_setting(k, old.get(k), new[k], arch)]
        if diff:
            k = diff[0]
            had = (
                f"{k}={old[k]!r}"
                if k in old
                else f"no {k} setting (recorded by an older version of monosemantic)"
            )
            raise UserError(
                f"{run_dir} holds a {stage} run with {had}, not {k}={new[k]!r}: "
                f"use another --out, or --force to discard it and start the {stage} stage over"
            )
    table[leaf] = new
    write_text(run_dir / "run.toml", tomli_w.dumps(data))
