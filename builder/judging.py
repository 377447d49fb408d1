"""LLM-as-a-judge over any Generator: rubric rendering, score parsing, forced digit scoring, sample averaging.

Modes (SPEC "Judge"):
  generate  the judge writes a justification ending with `Score: N`; the parsed N of each judge sample that has
            one is averaged. No parsable sample: score null, parse_error says why (the last failure).
  forced    the judge writes a justification (max_new_tokens > 0) or none (0); the reply is cut where it starts a
            "Score" of its own, "Score:" is appended and the backend reads P(digit 0..5) for the next token;
            the score is the expected value (continuous, so ties are rare). Several samples: the distributions
            are averaged. The distribution is recorded in digit_probs.
  auto      generate first; for a response with no parsable sample, forced on the same justifications.
`scored_by` records which mode produced the score (null when none did).

Seeds: judge sample j of an item uses seed + j, so one sample uses the item's seed and a vLLM backend can send an
item's samples as one request (consecutive seeds, see builder/backends/vllm.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.backends.base import SCORE_DIGITS, SCORE_PREFIX, Generator, GenRequest, SamplingSettings
from builder.errors import TsrError
from builder.fingerprint import content_hash
from builder.readers import read_text_file

MODES = ("generate", "forced", "auto")
# raw_reply of a judgment with several judge samples: the replies joined with this line between them
SAMPLE_SEPARATOR = "\n\n=== next judge sample ===\n\n"

# A line that ends with "Score: N": any text before "score" ("Total score", "**Score"), markdown bold or italics
# around the label or the number, ":" or "=", an optional "/5" (another scale is an error) or "points", a trailing
# period.
_SCORE_LINE = re.compile(
    r"\bscore[\s*_]*[:=][\s*_]*(?P<number>[-+]?\d+(?:\.\d+)?)"
    r"[\s*_]*(?:/\s*(?P<scale>\d+)|out of 5|points?)?[\s*_]*\.?[\s*_]*$",
    re.IGNORECASE,
)
# Where forced mode cuts a reply: the first "score" the judge wrote, with any markup just before it.
_SCORE_WORD = re.compile(r"[\s*_#>-]*\bscore\b", re.IGNORECASE)


@dataclass
class Judgment:
    """The judge-produced columns of a JUDGMENTS row."""

    score: float | None  # 0..5, null when no mode produced one
    scored_by: str | None  # "generate" | "forced" | None
    raw_reply: str  # what the judge wrote (samples joined by SAMPLE_SEPARATOR); "" for forced with no tokens
    parse_error: str | None  # why a generated reply had no score (the last failing sample), else None
    digit_probs: list[float] | None  # forced: P(0..5) averaged over samples
    judge_samples: int  # replies averaged into the score (0 when the score is null)


# ---------------------------------------------------------------------------------------------------------------
# Template


def load_template(path: str | Path) -> str:
    """Read a rubric template and check that it takes exactly {prompt} and {response}."""
    path = Path(path)
    text = read_text_file(path, "judge template")  # missing, a folder, unreadable or not UTF-8: one line
    try:
        text.format(prompt="", response="")
    except (AttributeError, TypeError) as exc:  # {prompt.x}: check_template names the other mistakes
        raise TsrError(f"{path}: a judge template takes only {{prompt}} and {{response}} placeholders "
                       f"(write other braces as {{{{ and }}}}): {exc!r}") from None
    except (KeyError, IndexError, ValueError):
        pass
    check_template(text, str(path))
    return text


def check_template(text: str, where: str = "judge template") -> None:
    try:
        text.format(prompt="", response="")
    except (KeyError, IndexError, ValueError) as exc:
        raise TsrError(f"{where}: a judge template takes only {{prompt}} and {{response}} placeholders "
                       f"(write other braces as {{{{ and }}}}): {exc!r}") from None
    missing = [name for name in ("{prompt}", "{response}") if name not in text]
    if missing:
        raise TsrError(f"{where}: a judge template must contain {' and '.join(missing)}")


def render_template(template: str, prompt: str, response: str) -> str:
    return template.format(prompt=prompt, response=response)


def template_hash(text: str) -> str:
    return content_hash({"judge_template": text})


# ---------------------------------------------------------------------------------------------------------------
# Scores


def parse_score(reply: str) -> tuple[int | None, str | None]:
    """The score of the last line that ends with `Score: N`: (N, None), or (None, a short reason)."""
    if not reply.strip():
        return None, "empty reply"
    for line in reversed(reply.strip().splitlines()):
        match = _SCORE_LINE.search(line.strip())
        if match is None:
            continue
        number, scale = match.group("number", "scale")
        if scale is not None and scale != "5":
            return None, f"score {number}/{scale} is not on the 0-5 scale"
        value = float(number)
        if value != int(value):
            return None, f"score {number} is not a whole number 0-5"
        if not SCORE_DIGITS[0] <= value <= SCORE_DIGITS[-1]:
            return None, f"score {number} is outside 0-5"
        return int(value), None
    return None, "no 'Score: N' line"


def expected_score(probs: Sequence[float]) -> float:
    """sum(i * p_i) over the digits 0..5 (renormalized, should the probabilities not sum to exactly 1)."""
    return sum(i * p for i, p in zip(SCORE_DIGITS, probs)) / sum(probs)


def cut_at_score(reply: str) -> str:
    """The justification before the first "score" the judge wrote (and its markup), trailing space removed."""
    match = _SCORE_WORD.search(reply)
    return (reply[: match.start()] if match else reply).rstrip()


def forced_continuation(reply: str) -> str:
    """The assistant text forced scoring reads after: the cut justification, a newline, then "Score:".

    It ends without a space: the backend appends the tokens its tokenizer writes between ":" and the digit.
    """
    justification = cut_at_score(reply)
    return f"{justification}\n{SCORE_PREFIX}" if justification else SCORE_PREFIX


# ---------------------------------------------------------------------------------------------------------------
# Judging


def judge(
    generator: Generator,
    items: Sequence[tuple[str, str, str, int]],
    template: str,
    mode: str,
    sampling: SamplingSettings,
    samples: int = 1,
) -> list[Judgment]:
    """Judge (key, prompt, response, seed) items with `generator`; one Judgment per item, in order."""
    if mode not in MODES:
        raise ValueError(f"judge mode must be one of {', '.join(MODES)}, got {mode!r}")
    if samples < 1:
        raise ValueError(f"judge samples must be at least 1, got {samples}")
    if mode != "forced" and sampling.max_new_tokens < 1:
        raise ValueError(f"judge mode {mode!r} needs max_new_tokens >= 1 to write a score")
    messages = [[{"role": "user", "content": render_template(template, prompt, response)}]
                for _, prompt, response, _ in items]
    writes = sampling.max_new_tokens > 0
    # With no justification to sample, every forced sample would read the same distribution: read it once.
    count = samples if writes else 1
    replies: list[list[str]] = [[""] * count for _ in items]
    truncated: list[list[bool]] = [[False] * count for _ in items]
    if writes:
        requests = [GenRequest(key=f"{i}/{j}", messages=messages[i], seed=item[3] + j)
                    for i, item in enumerate(items) for j in range(count)]
        for batch in generator.generate(requests, sampling):
            for result in batch:
                i, j = (int(part) for part in result.key.split("/"))
                replies[i][j] = result.text
                truncated[i][j] = result.finish_reason == "length"

    judgments: list[Judgment] = []
    to_force: list[int] = []
    for i in range(len(items)):
        raw = SAMPLE_SEPARATOR.join(replies[i])
        if mode == "forced":
            judgments.append(Judgment(None, None, raw, None, None, 0))
            to_force.append(i)
            continue
        scores, error = [], None
        for reply, cut in zip(replies[i], truncated[i]):
            score, problem = parse_score(reply)
            if score is None:
                error = f"{problem} (reply cut at max_new_tokens)" if cut else problem
            else:
                scores.append(score)
        if scores:
            judgments.append(Judgment(sum(scores) / len(scores), "generate", raw, error, None, len(scores)))
        else:
            judgments.append(Judgment(None, None, raw, error, None, 0))
            if mode == "auto":
                to_force.append(i)

    if to_force:
        texts = [generator.render(messages[i], forced_continuation(reply)) for i in to_force for reply in replies[i]]
        probs = iter(generator.digit_probs(texts))
        for i in to_force:
            rows = [next(probs) for _ in replies[i]]
            mean = [sum(column) / len(rows) for column in zip(*rows)]
            judgment = judgments[i]
            judgment.score, judgment.scored_by = expected_score(mean), "forced"
            judgment.digit_probs, judgment.judge_samples = mean, len(rows)
    return judgments
