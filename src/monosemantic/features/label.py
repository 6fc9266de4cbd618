"""Offline explanations in words a person would write: label a feature with the lexicon entry
whose sentence embedding best matches the windows where it fires, plus its firing tokens.

The lexicon is what the project already ships: the WordNet entries of the bundled corpus
(``headword, synonym (noun): gloss``, about 27,000 of them: people, places, works, emotions,
sciences, ...) and the concept list (``data/concepts.tsv``). Each entry is embedded once with
all-MiniLM-L6-v2 (``scorers.Embedder``; cached next to the feature database). A feature's
*firing windows* are its top contexts cut to a few tokens around the peak; their mean embedding
is compared with every entry, and the explanation is an entry's headword and the start of its
gloss, then the contrastive firing tokens, e.g.
``city (a large and densely populated urban area): fires on " Toronto", " Montreal"``.
When no entry is close (cosine below ``MIN_COSINE``), only the token list is given.

Which entry: with a *background* (windows of the analysed text drawn at random, the same for
every feature: ``Labeler.with_background``), the explainer scores itself on what it has seen,
the top contexts: among the ``CANDIDATES`` entries nearest to the firing windows it keeps the one
that best tells the windows around *every* firing token of the top contexts (weak ones too,
spread evenly over the activations, as the held-out samples are) from the background (AUC of the
cosines) (``NAMED_FIRST`` would restrict them to entries a firing token names). It keeps the entry only
when the labelled text tells the windows apart at least as well as the token list alone. It
never reads the held-out contexts that score it. Without a background it takes the nearest entry
(measured in docs/features.md).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import re
import zlib
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monosemantic.corpus import DEFAULT_PATH
from monosemantic.features.concepts import load_concepts
from monosemantic.features.db import Context
from monosemantic.features.explain import _norm, contrastive_terms, row_auc
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
CANDIDATES = 100
"""Entries nearest to the firing windows among which the self-score chooses."""
NEAREST_BONUS = 0.01
"""Self-score AUC by which another candidate must beat the nearest entry to replace it."""
NAMED_FIRST = False
"""When a firing token names entries ('exception' for " exception", the concept 'und' for
" und"), choose among those only. Off: measured on the 82 coherent features of docs/features.md,
it reads better but costs 0.02 detection AUC (0.636 against 0.656), because the bare names score
lower than entries that describe the text around the token (German " und" labelled 'und' 0.67,
'Old Catholic (a member of the church formed in the...' 0.86)."""
SELF_WINDOW = 4
"""Tokens on each side of a firing token in the windows the explainer scores itself on."""
SELF_POSITIVES = 60
"""Firing windows (evenly spaced over the activations) the explainer scores itself on."""
_ENTRY = re.compile(r"^(?P<head>[^()\n]{1,80}?) \((?P<pos>noun|verb|adjective|adverb)\): (?P<gloss>[^;\n]+)")


@dataclass(frozen=True)
class Entry:
    head: str
    """What the label says: the first headword ('Einstein'), or a concept's name."""
    text: str
    """What is embedded: headwords and gloss ('Einstein, Albert Einstein (noun): physicist born
    in Germany ...'), or 'concept (kind)'."""
    names: tuple[str, ...] = ()
    """The words that name it, lower case: its headwords, or a concept's name and aliases."""


def lexicon(corpus: Path = DEFAULT_PATH, common: int = LEXICON_COMMON) -> list[Entry]:
    """The WordNet entries of the bundled corpus, then the concept list; deduplicated by text.

    The corpus holds every WordNet synset (117k); the lexicon keeps those named with a capital
    (people, places, works, languages: about 17k; taxa such as genera excepted) and ``common`` of
    the others, chosen by a stable hash of their text, so that embedding it stays a few minutes
    of CPU."""
    named: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # entry text -> (first headword, gloss, names)
    other: dict[str, tuple[str, str, tuple[str, ...]]] = {}
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
                    names = tuple(h.strip().lower() for h in m["head"].split(",") if h.strip())
                    into = named if head[:1].isupper() and not _TAXON.match(m["gloss"]) else other
                    into.setdefault(m.group(0), (head, m["gloss"], names))
    # zlib.crc32: a stable hash (the same on every machine and run) and quick on 100k entries
    keep = sorted(other, key=lambda t: zlib.crc32(t.encode("utf-8", "surrogatepass")))[:common]
    out = {
        text: Entry(f"{head} ({' '.join(gloss.split()[:GLOSS_WORDS])})", text, names)
        for text, (head, gloss, names) in [*named.items(), *((t, other[t]) for t in keep)]
    }
    for c in load_concepts():
        text = f"{c.name} ({c.kind})"
        out.setdefault(text, Entry(c.name, text, tuple(f.lower() for f in c.forms)))
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


def self_positives(
    contexts: Sequence[Context], n: int = SELF_POSITIVES, width: int = SELF_WINDOW
) -> list[str]:
    """Windows of ±``width`` tokens around every token that fires (activation > 0) in the
    contexts, ``n`` of them evenly spaced over the activations from weakest to strongest, distinct."""
    items = sorted(
        (a, "".join(c.tokens[max(0, i - width) : i + width + 1]))
        for c in contexts
        for i, a in enumerate(c.acts)
        if a > 0
    )
    if len(items) > n:
        items = [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]
    return list(dict.fromkeys(t for _, t in items))


@dataclass(frozen=True)
class Labeler:
    embedder: Embedder
    entries: list[Entry]
    emb: np.ndarray
    """(n_entries, 384) unit vectors of the entries."""
    background: np.ndarray | None = None
    """(n, 384) unit vectors of random windows of the analysed text; None: not given yet
    (``explain_features`` draws one); no rows: take the nearest entry, no self-score."""

    background_seqs: tuple[int, ...] = ()
    """The analysed sequence each background window comes from."""

    def with_background(self, windows: Sequence[tuple[int, str]]) -> Labeler:
        """This labeler, scoring itself against these (sequence, text) windows
        (``explain_run.background_windows``)."""
        if not windows:
            return dataclasses.replace(
                self, background=np.zeros((0, 384), dtype=np.float32), background_seqs=()
            )
        emb = self.embedder.embed([t for _, t in windows])
        return dataclasses.replace(self, background=emb, background_seqs=tuple(s for s, _ in windows))

    @functools.cached_property
    def named(self) -> dict[str, list[int]]:
        """Lower-case word -> the entries it names."""
        out: dict[str, list[int]] = {}
        for i, e in enumerate(self.entries):
            for name in e.names:
                out.setdefault(name, []).append(i)
        return out

    def best_entry(self, contexts: Sequence[Context]) -> tuple[Entry, float]:
        """The entry nearest to the mean embedding of the contexts' firing windows, and its cosine."""
        entry, sim, _, _ = self._choose(contexts, np.zeros((0, 384)), ())
        return entry, sim

    def _background(self, avoid: Collection[int]) -> np.ndarray:
        if self.background is None or not avoid:
            return self.background if self.background is not None else np.zeros((0, 384))
        keep = [i for i, s in enumerate(self.background_seqs) if s not in avoid]
        return self.background[keep]

    def _choose(
        self, contexts: Sequence[Context], background: np.ndarray, tokens: Sequence[str]
    ) -> tuple[Entry, float, np.ndarray | None, np.ndarray]:
        """(nearest entry, its cosine, None, background) with an empty background, else (the
        candidate with the best self-score, the nearest cosine, self-positive embeddings,
        background); the candidates are the nearest entries and those that ``tokens`` name."""
        w = self.embedder.embed([firing_window(c) for c in contexts])
        centre = w.mean(0)
        centre /= max(float(np.linalg.norm(centre)), 1e-12)
        sims = self.emb @ centre
        j = int(np.argmax(sims))
        if len(background) == 0:
            return self.entries[j], float(sims[j]), None, background
        pos = self.embedder.embed(self_positives(contexts))
        named = sorted({i for t in tokens for i in self.named.get(t.strip().lower(), [])})
        cand = np.array(named) if named and NAMED_FIRST else np.argsort(-sims)[:CANDIDATES]
        score = row_auc(self.emb[cand] @ pos.T, self.emb[cand] @ background.T)
        if cand[0] == j:
            score[0] += NEAREST_BONUS  # the nearest entry reads well: another must beat it clearly
        return self.entries[int(cand[int(np.argmax(score))])], float(sims[j]), pos, background

    def explain(
        self, contexts: Sequence[Context], base: Counter[str], base_total: int, avoid: Collection[int] = ()
    ) -> str:
        """The explanation of a feature from its top ``contexts``; background windows from the
        sequences in ``avoid`` (those of the held-out contexts that will score it) are left out."""
        fires = contrastive_terms(contexts, base, base_total, k=2)
        tokens = ", ".join(f'"{_norm(t.text)}"' for t in fires)
        plain = f"fires on {tokens}" if tokens else "no consistent tokens"
        if not contexts:
            return plain
        entry, sim, pos, background = self._choose(contexts, self._background(avoid), [t.text for t in fires])
        if sim < MIN_COSINE:
            return plain
        labelled = f"{entry.head}: fires on {tokens}" if tokens else entry.head
        if pos is not None and tokens:
            # keep the entry only when it helps tell the firing windows from the background
            e = self.embedder.embed([plain, labelled])
            own = row_auc(e @ pos.T, e @ background.T)
            return labelled if own[1] >= own[0] else plain
        return labelled
