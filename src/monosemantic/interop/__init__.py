"""Readers and writers of other libraries' dictionary formats (SAELens, sparsify,
dictionary_learning) and the Neuronpedia export; one module per format, see ``base.py``."""

from __future__ import annotations

from pathlib import Path

from monosemantic.errors import UserError
from monosemantic.interop import dictionary_learning, saelens, sparsify
from monosemantic.interop.base import ExportMeta, Foreign

READERS = {"saelens": saelens, "sparsify": sparsify, "dictionary_learning": dictionary_learning}
EXPORT_FORMATS = ("saelens", "sparsify", "dictionary_learning", "neuronpedia")


def detect_format(path: Path) -> tuple[str, Path]:
    """The format of the dictionary at ``path`` and its folder: ``path`` itself, or the one
    subfolder holding a dictionary (a sparsify run with one hookpoint, say).

    Raises:
        UserError: no folder, no dictionary, or several (named, to pick one).
    """
    if not path.is_dir():
        raise UserError(f"{path} is not a folder: give the folder that holds the dictionary's files")
    for name, module in READERS.items():
        if module.detect(path):
            return name, path
    found = [
        (name, sub)
        for sub in sorted(path.iterdir())
        if sub.is_dir()
        for name, m in READERS.items()
        if m.detect(sub)
    ]
    if len(found) == 1:
        return found[0]
    if found:
        subs = ", ".join(sub.name for _, sub in found)
        raise UserError(f"{path} holds several dictionaries ({subs}): give one of their folders")
    raise UserError(
        f"{path} holds no dictionary we read (SAELens: cfg.json + sae_weights.safetensors; sparsify: "
        "cfg.json + sae.safetensors; dictionary_learning: ae.pt + config.json)"
    )


def read_dictionary(path: Path, fmt: str = "auto") -> Foreign:
    """The dictionary at ``path`` in format ``fmt`` (``auto``: detected from the files).

    Raises:
        UserError: an unknown format, or anything the format's reader refuses.
    """
    if fmt == "auto":
        found, folder = detect_format(path)
        return READERS[found].read(folder)
    if fmt not in READERS:
        raise UserError(f"unknown --format {fmt!r}: choose auto, {', '.join(READERS)}")
    if not path.is_dir():
        raise UserError(f"{path} is not a folder: give the folder that holds the dictionary's files")
    subs = [sub for sub in sorted(path.iterdir()) if sub.is_dir() and READERS[fmt].detect(sub)]
    # forced: the folder itself, or its one subfolder of that format; the reader names what is missing
    return READERS[fmt].read(subs[0] if len(subs) == 1 and not READERS[fmt].detect(path) else path)


__all__ = ["EXPORT_FORMATS", "READERS", "ExportMeta", "Foreign", "detect_format", "read_dictionary"]
