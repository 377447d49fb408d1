"""The program a configured command runs (train.launcher, generate.serve_command), found the way a user expects.

Next to this Python first, so a virtual environment's `torchrun`, `vllm` or `transformers` is the one that runs
even when the environment is not activated; then on PATH. A word with a slash is a path and is taken as given.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from builder.errors import TsrError


def find_program(word: str, where: str) -> str:
    """The executable `word` names; a one-line error naming the setting (`where`) when there is none."""
    beside = Path(sys.executable).parent / word
    program = str(beside) if "/" not in word and beside.is_file() else shutil.which(word)
    if program is None:
        raise TsrError(f"{where}: {word!r} not found (next to {sys.executable} or on PATH)")
    return program
