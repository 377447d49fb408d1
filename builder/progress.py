"""Stage progress on stderr: a bar on a terminal, otherwise a plain log line every 30 seconds or so.

Under CI, Slurm or nohup stderr is a file: a bar would either write nothing (tqdm disabled) or thousands of
carriage-return frames. There a line with rows done, tokens per second and the time left is written every
`TSR_PROGRESS_SECONDS` (default 30), and one when the stage ends.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

DEFAULT_INTERVAL = 30.0


def log_interval() -> float:
    value = os.environ.get("TSR_PROGRESS_SECONDS", "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


class Progress:
    def __init__(self, label: str, total: int, unit: str = "row"):
        self.label, self.total, self.unit = label, total, unit
        self.started = time.monotonic()
        self.tokens = 0
        self.done = 0
        self.terminal = sys.stderr.isatty()
        self.interval = log_interval()
        self.last_line = self.started
        self.bar = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, disable=not self.terminal,
                        dynamic_ncols=True)

    def update(self, rows: int, tokens: int = 0) -> None:
        self.tokens += tokens
        self.done += rows
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens / elapsed:.1f} tok/s", refresh=False)
        self.bar.update(rows)
        now = time.monotonic()
        if not self.terminal and now - self.last_line >= self.interval and self.done < self.total:
            self.last_line = now
            self._line(final=False)

    def _line(self, final: bool) -> None:
        elapsed = time.monotonic() - self.started
        parts = [f"{self.label}: {self.done}/{self.total} {self.unit}s", f"{elapsed:.0f} s"]
        if self.tokens:
            parts.append(f"{self.tokens / max(elapsed, 1e-9):.1f} tok/s")
        if not final and self.done:
            parts.append(f"about {elapsed * (self.total - self.done) / self.done:.0f} s left")
        print(f"[tsr] {', '.join(parts)}{' (done)' if final else ''}", file=sys.stderr, flush=True)

    def __enter__(self) -> Progress:  # noqa: PYI034 (typing.Self needs Python 3.11; the project supports 3.10)
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if not self.terminal and self.total and exc[0] is None:
            self._line(final=True)


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
