"""A progress bar of rows and tokens per second, on stderr, quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    def __init__(self, label: str, total: int):
        self.started = time.monotonic()
        self.tokens = 0
        self.bar = tqdm(total=total, desc=label, unit="row", file=sys.stderr, disable=not sys.stderr.isatty(),
                        dynamic_ncols=True)

    def update(self, rows: int, tokens: int = 0) -> None:
        self.tokens += tokens
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens / elapsed:.1f} tok/s", refresh=False)
        self.bar.update(rows)

    def __enter__(self) -> Progress:  # noqa: PYI034 (typing.Self needs Python 3.11; the project supports 3.10)
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def quiet_libraries() -> None:
    """Silence the per-tensor loading bars and advice of transformers, datasets and TRL.

    The loop loads a model several times per iteration; their bars would bury the stage progress and summary.
    Warnings that matter still reach the log at error level.
    """
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:  # datasets comes with the train extra; generation alone does not need it
        pass
    logging.getLogger("trl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
