"""Real text for parity cases, built offline: the docstrings of Python's own standard library.

A trained model is exercised by text, not by random token ids (which miss the outlier features and
confident predictions of real inputs). Every machine has the standard library, so the corpus needs no
download: the module and public-member docstrings of a fixed list of modules, in a fixed order,
normalised to paragraphs of English prose (doctest and code lines dropped). The text differs a little
between Python versions; `corpus_digest` goes into each parity record so a number says which text it
was measured on.

Tokenized, the corpus is cut into consecutive windows of `seq_len` tokens: batch `b` of a case is the
windows [b*batch, (b+1)*batch), so every batch is distinct text and runs are reproducible.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import re
from typing import Any

import torch

# Modules whose documentation is mostly prose; order matters (it fixes the text).
MODULES = (
    "collections", "itertools", "functools", "pathlib", "textwrap", "argparse", "logging", "json", "csv",
    "datetime", "decimal", "fractions", "statistics", "random", "heapq", "bisect", "string", "difflib",
    "unittest", "doctest", "email.message", "http.client", "urllib.parse", "threading", "subprocess",
    "shutil", "tempfile", "zipfile", "tarfile", "sqlite3", "contextlib", "dataclasses", "enum", "typing",
    "inspect", "asyncio.tasks", "concurrent.futures", "socket", "selectors", "struct", "pickle", "copy",
    "pprint", "operator", "abc", "numbers", "math", "cmath", "calendar", "locale", "gettext", "codecs",
)
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|[-=]{3,}|[{}\[\]()]|\w+\s*=\s)|^\s{4,}")


def _paragraphs(doc: str) -> list[str]:
    """Prose paragraphs of a docstring: code, doctest and table lines dropped, lines joined."""
    paragraphs = []
    for block in doc.split("\n\n"):
        lines = [line.strip() for line in block.splitlines() if line.strip() and not _CODE_LINE.match(line)]
        text = " ".join(lines)
        if len(text) >= 60 and text.count(" ") >= 8:  # sentences, not signatures or headings
            paragraphs.append(text)
    return paragraphs


def _docstrings(module_name: str) -> list[str]:
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # a stripped-down Python: skip, the digest says which text was used
        return []
    docs = [inspect.getdoc(module) or ""]
    for name in sorted(getattr(module, "__all__", None) or dir(module)):
        if not name.startswith("_"):
            docs.append(inspect.getdoc(getattr(module, name, None)) or "")
    return docs


@functools.cache
def corpus_text() -> str:
    """The whole corpus: unique prose paragraphs, one per line, in module order."""
    seen: dict[str, None] = {}
    for module_name in MODULES:
        for doc in _docstrings(module_name):
            for paragraph in _paragraphs(doc):
                seen.setdefault(paragraph, None)
    return "\n".join(seen)


def corpus_digest() -> str:
    """A short hash of the corpus text (it differs a little between Python versions)."""
    return hashlib.sha256(corpus_text().encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def _token_ids(tokenizer: Any) -> torch.Tensor:
    return torch.tensor(tokenizer(corpus_text(), add_special_tokens=False).input_ids, dtype=torch.long)


def text_batches(tokenizer: Any, *, batches: int, batch: int, seq_len: int) -> list[torch.Tensor]:
    """`batches` batches of [batch, seq_len] token ids: consecutive windows of the tokenized corpus."""
    ids = _token_ids(tokenizer)
    needed = batches * batch * seq_len
    if needed > ids.numel():
        raise ValueError(f"the corpus has {ids.numel()} tokens; {batches} x {batch} x {seq_len} = {needed} asked for")
    windows = ids[:needed].view(batches, batch, seq_len)
    return list(windows.unbind(0))


def prompts(tokenizer: Any, *, count: int, length: int, skip_tokens: int = 0) -> torch.Tensor:
    """[count, length] prompt token ids, each the start of a different corpus paragraph (after `skip_tokens`).

    Paragraph starts make natural prompts; equal lengths let them decode as one unpadded batch.
    """
    out: list[list[int]] = []
    for paragraph in corpus_text().split("\n"):
        ids = tokenizer(paragraph, add_special_tokens=False).input_ids
        if len(ids) >= length:
            out.append(ids[:length])
        if len(out) == count + skip_tokens:
            break
    chosen = out[skip_tokens:skip_tokens + count]
    if len(chosen) < count:
        raise ValueError(f"the corpus has only {len(chosen)} paragraphs of >= {length} tokens; {count} asked for")
    return torch.tensor(chosen, dtype=torch.long)
