"""Offline explanations in words a person would write: label a feature with the lexicon entry
whose sentence embedding best matches the windows where it fires, plus its firing tokens.

The lexicon is what the project already ships: the WordNet entries of the bundled corpus
(``headword, synonym (noun): gloss``, about 27,000 of them: people, places, works, emotions,
sciences, ...) and the concept list (``data/concepts.tsv``). Each entry is embedded once with
all-MiniLM-L6-v2 (``scorers.Embedder``; cached next to the feature database). A feature's
*firing windows* are its top contexts cut to a few tokens around the peak; their mean embedding
is compared with every entry, and the explanation is the best entry's headword and the start of
its gloss, then the contrastive firing tokens, e.g.
``city (a large and densely populated urban area): fires on " Toronto", " Montreal"``.
When no entry is close (cosine below ``MIN_COSINE``), only the token list is given.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monosemantic.corpus import DEFAULT_PATH
from monosemantic.features.concepts import load_concepts
from monosemantic.features.db import Context
from monosemantic.features.explain import _norm, contrastive_terms
from monosemantic.features.scorers import Embedder
from monosemantic.fsio import atomic_path, fingerprint
from monosemantic.models import cache_dir

MIN_COSINE = 0.35
"""Below this similarity between the firing windows and the best entry, the entry is left out."""
LABEL_WINDOW = 6
"""Tokens on each side of the peak in a firing window."""
GLOSS_WORDS = 8
LEXICON_COMMON = 10_000
"""WordNet entries not named with a capital that the lexicon keeps (of about 100k)."""
_TAXON = re.compile(
    r"(?:[\w-]+ ){0,3}(?:genus|genera|family|order|suborder|class|subclass|phylum|subphylum|division|"
    r"subfamily|superfamily|superorder|tribe|kingdom|subkingdom|variety|species)\b"
)
"""A gloss that names a taxon ('type genus of the Fringillidae'): capitalized, but no name a reader
would label a feature with, so it counts with the common entries."""
_ENTRY = re.compile(r"^(?P<head>[^()\n]{1,80}?) \((?P<pos>noun|verb|adjective|adverb)\): (?P<gloss>[^;\n]+)")


@dataclass(frozen=True)
class Entry:
    head: str
    """What the label says: the first headword ('Einstein'), or a concept's name."""
    text: str
    """What is embedded: headwords and gloss ('Einstein, Albert Einstein (noun): physicist born
    in Germany ...'), or 'concept (kind)'."""


def lexicon(corpus: Path = DEFAULT_PATH, common: int = LEXICON_COMMON) -> list[Entry]:
    """The WordNet entries of the bundled corpus, then the concept list; deduplicated by text.

    The corpus holds every WordNet synset (117k); the lexicon keeps those named with a capital
    (people, places, works, languages: about 17k; taxa such as genera excepted) and ``common`` of
    the others, chosen by a stable hash of their text, so that embedding it stays a few minutes
    of CPU."""
    named: dict[str, tuple[str, str]] = {}  # entry text -> (first headword, gloss)
    other: dict[str, tuple[str, str]] = {}
    with gzip.open(corpus, "rt", encoding="utf-8") as f:
        for line in f:
            if '"source": "wordnet"' not in line:  # the cheap test first: most lines are not
                continue
            doc = json.loads(line)
            if doc.get("source") != "wordnet":
                continue
            for m in map(_ENTRY.match, doc["text"].splitlines()):
                if m is not None:
                    head = m["head"].partition(",")[0].strip()
                    into = named if head[:1].isupper() and not _TAXON.match(m["gloss"]) else other
                    into.setdefault(m.group(0), (head, m["gloss"]))
    # zlib.crc32: a stable hash (the same on every machine and run) and quick on 100k entries
    keep = sorted(other, key=lambda t: zlib.crc32(t.encode("utf-8", "surrogatepass")))[:common]
    out = {
        text: Entry(f"{head} ({' '.join(gloss.split()[:GLOSS_WORDS])})", text)
        for text, (head, gloss) in [*named.items(), *((t, other[t]) for t in keep)]
    }
    for c in load_concepts():
        text = f"{c.name} ({c.kind})"
        out.setdefault(text, Entry(c.name, text))
    return list(out.values())


def lexicon_embeddings(embedder: Embedder, entries: Sequence[Entry], cache: Path | None) -> np.ndarray:
    """(n_entries, 384) unit vectors, read from ``cache`` when it exists (name the file after the
    entries' fingerprint)."""
    if cache is not None and cache.is_file():
        z = np.load(cache)
        return z["emb"]
    order = np.argsort([len(e.text) for e in entries], kind="stable")  # batches of like length pad little
    emb = np.empty((len(entries), 384), dtype=np.float32)
    emb[order] = embedder.embed([entries[i].text for i in order])
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, emb=emb)
    return emb


def default_labeler(embedder: Embedder) -> Labeler:
    """The bundled lexicon, its embeddings cached under the user's cache folder (a few minutes on
    a CPU the first time, keyed by the lexicon's content)."""
    entries = lexicon()
    key = fingerprint(*(e.text for e in entries))[:16]
    return Labeler(
        embedder, entries, lexicon_embeddings(embedder, entries, cache_dir() / f"lexicon-{key}.npz")
    )


def firing_window(c: Context, width: int = LABEL_WINDOW) -> str:
    i = c.peak - c.start
    return "".join(c.tokens[max(0, i - width) : i + width + 1])


@dataclass(frozen=True)
class Labeler:
    embedder: Embedder
    entries: list[Entry]
    emb: np.ndarray
    """(n_entries, 384) unit vectors of the entries."""

    def best_entry(self, contexts: Sequence[Context]) -> tuple[Entry, float]:
        """The entry nearest to the mean embedding of the contexts' firing windows, and its cosine."""
        w = self.embedder.embed([firing_window(c) for c in contexts])
        centre = w.mean(0)
        centre /= max(float(np.linalg.norm(centre)), 1e-12)
        sims = self.emb @ centre
        j = int(np.argmax(sims))
        return self.entries[j], float(sims[j])

    def explain(self, contexts: Sequence[Context], base: Counter[str], base_total: int) -> str:
        fires = contrastive_terms(contexts, base, base_total, k=2)
        tokens = ", ".join(f'"{_norm(t.text)}"' for t in fires)
        entry, sim = self.best_entry(contexts) if contexts else (None, 0.0)
        if entry is None or sim < MIN_COSINE:
            return f"fires on {tokens}" if tokens else "no consistent tokens"
        return f"{entry.head}: fires on {tokens}" if tokens else entry.head
