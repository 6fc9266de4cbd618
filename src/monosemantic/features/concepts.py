"""The bundled concept list (``data/concepts.tsv``): what people search a dictionary for (people,
places, vulnerabilities, languages, emotions, ...), with the aliases that count as the concept
when a feature's contexts are judged. Used to measure concept search (``scripts/concept_eval.py``)
and to label features (``features.label``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from monosemantic.errors import UserError

DEFAULT_CONCEPTS = Path(__file__).resolve().parent.parent / "data" / "concepts.tsv"


@dataclass(frozen=True)
class Concept:
    name: str
    """The query as a user types it, e.g. 'SQL injection'."""
    kind: str
    """person, city, country, landmark, security, code, language, emotion, science, game, law,
    number, web, animal, medicine."""
    aliases: tuple[str, ...]
    """Inflections and synonyms that also count as the concept ('French' for France)."""

    @property
    def forms(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def load_concepts(path: Path = DEFAULT_CONCEPTS) -> list[Concept]:
    """Rows ``name<TAB>kind<TAB>alias|alias``; lines starting with '#' are comments.

    Raises:
        UserError: a missing file or a row without a kind."""
    if not path.is_file():
        raise UserError(f"concept list {path} not found: give a .tsv of name<TAB>kind<TAB>aliases")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise UserError(f"{path}:{n}: expected name<TAB>kind[<TAB>aliases], got {line!r}")
        aliases = tuple(a.strip() for a in (cols[2] if len(cols) > 2 else "").split("|") if a.strip())
        out.append(Concept(cols[0].strip(), cols[1].strip(), aliases))
    return out


def form_pattern(forms: Sequence[str]) -> re.Pattern[str]:
    """Any of the forms as whole words (edges only where a form starts/ends with a word character
    of a spaced script: '的' matches inside Chinese text, 'Paris' not inside 'comparison'),
    case-insensitive."""

    def one(form: str) -> str:
        body = re.escape(form)
        left = r"\b" if form[:1].isascii() and (form[:1].isalnum() or form[:1] == "_") else ""
        right = r"\b" if form[-1:].isascii() and (form[-1:].isalnum() or form[-1:] == "_") else ""
        return left + body + right

    return re.compile("|".join(one(f) for f in sorted(forms, key=len, reverse=True)), re.IGNORECASE)


def count_occurrences(texts: Iterable[str], concepts: Sequence[Concept]) -> dict[str, tuple[int, int]]:
    """concept name -> (occurrences of the name itself, documents containing it), whole words."""
    patterns = {c.name: form_pattern([c.name]) for c in concepts}
    counts = {c.name: (0, 0) for c in concepts}
    for doc in texts:
        for name, pat in patterns.items():
            n = len(pat.findall(doc))
            if n:
                occ, docs = counts[name]
                counts[name] = (occ + n, docs + 1)
    return counts
