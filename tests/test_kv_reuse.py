"""The hf backend's cache reuse (builder/backends/kv_reuse.py) computes what a full prefill computes.

On the tiny fp32 model the reuse paths must give the same sampled text and the same digit probabilities (to
float rounding) as the plain path, and must actually forward fewer tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder import judging
from builder.backends import kv_reuse
from builder.backends.base import GenRequest, SamplingSettings
from tests.tiny_model import make_tiny_model

RUBRIC = ("Review the user's question and the response using the additive 5-point scoring system. "
          "Write a short answer to the question, then the score.\n\n")
SAMPLE = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=10)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def pair(tiny_folder: Path):
    """Two generators on the same weights: one reusing caches, one computing everything from scratch."""
    from builder.backends.hf import HFGenerator

    reusing = HFGenerator(str(tiny_folder), dtype="float32", batch_size=4)
    plain = HFGenerator(str(tiny_folder), dtype="float32", batch_size=4, reuse_cache=False)
    return reusing, plain


@pytest.fixture()
def forwarded(pair):
    """Widths of the input_ids the reusing generator's model is called with (generate's steps included)."""
    reusing, _ = pair
    widths: list[int] = []
    original = reusing.model.forward

    def spy(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        widths.append(int(ids.shape[1]))
        return original(*args, **kwargs)

    reusing.model.forward = spy
    return widths


def requests(n: int = 6) -> list[GenRequest]:
    questions = ["What is the capital of France?", "Write a poem about the sea.", "Why is the sky blue?"]
    return [GenRequest(f"r{i}", [{"role": "user", "content": RUBRIC + questions[i % 3] + " Thanks" * i}], seed=i)
            for i in range(n)]


def texts_of(generator, batch, sampling=SAMPLE) -> dict[str, str]:
    return {r.key: r.text for chunk in generator.generate(batch, sampling) for r in chunk}


def test_common_prefix_length():
    assert kv_reuse.common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert kv_reuse.common_prefix_length([[5, 6]]) == 2
    assert kv_reuse.common_prefix_length([[1], [2]]) == 0
    assert kv_reuse.common_prefix_length([]) == 0


def test_shared_prefix_generation_samples_the_same_text(pair, forwarded):
    reusing, plain = pair
    batch = requests()
    assert texts_of(reusing, batch) == texts_of(plain, batch)
    prefix = len(reusing._prefix._ids)
    assert prefix >= kv_reuse.MIN_SHARED_PREFIX
    # the prefix was prefilled once (batch 1, its full width), then every batch forwarded only the rows' own part
    longest = max(len(reusing._encode(reusing.render(r.messages))) for r in batch)
    assert forwarded.count(prefix) == 1 and max(forwarded) <= longest - prefix
    # greedy too, and a second call reuses the kept prefix without prefilling it again
    greedy = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=6)
    forwarded.clear()
    assert texts_of(reusing, batch, greedy) == texts_of(plain, batch, greedy)
    assert prefix not in forwarded


def test_forced_score_after_generation_forwards_only_the_new_tokens(pair, forwarded):
    reusing, plain = pair
    batch = requests(4)
    replies = texts_of(reusing, batch)
    assert replies == texts_of(plain, batch)
    texts = [reusing.render(r.messages, judging.forced_continuation(replies[r.key])) for r in batch]
    forwarded.clear()
    probs = reusing.digit_probs(texts)
    assert probs == [pytest.approx(row, abs=1e-5) for row in plain.digit_probs(texts)]
    # One forward, of what the generated rows do not hold: "\nScore:", the bridge and the part of the reply that
    # re-encodes differently (on real text a token or two; the tiny model writes invalid UTF-8 bytes, whose
    # decoded text re-encodes differently from the first of them), so always less than the shared-prefix path.
    prefix_path = max(len(reusing._encode(t)) + len(reusing.score_tokens.bridge) for t in texts) - len(
        reusing._prefix._ids)
    assert len(forwarded) == 1 and forwarded[0] < prefix_path


def test_forced_score_of_a_cut_reply_hides_the_cut_tokens(pair):
    """A reply cut at its own "Score" shares only its start with the generated row; the rest must be masked."""
    reusing, plain = pair
    batch = requests(2)
    replies = texts_of(reusing, batch, SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=10))
    texts = [reusing.render(r.messages, replies[r.key][: len(replies[r.key]) // 2] + "\nScore:") for r in batch]
    assert reusing.digit_probs(texts) == [pytest.approx(row, abs=1e-5) for row in plain.digit_probs(texts)]


def test_forced_texts_without_a_generation_use_the_shared_prefix(pair, forwarded):
    reusing, plain = pair
    texts = [reusing.render(r.messages, "Fine.\nScore:") for r in requests(5)]
    assert reusing.digit_probs(texts) == [pytest.approx(row, abs=1e-5) for row in plain.digit_probs(texts)]
    assert max(forwarded) < min(len(reusing._encode(t)) for t in texts)


def test_rows_without_a_shared_prefix_take_the_plain_path(pair, forwarded):
    reusing, plain = pair
    batch = [GenRequest("a", [{"role": "user", "content": "Hello"}], 1),
             GenRequest("b", [{"role": "user", "content": "Why?"}], 2)]
    assert texts_of(reusing, batch) == texts_of(plain, batch)
    assert reusing._prefix._ids == ()


def test_growing_layer_holds_what_a_dynamic_layer_holds():
    """Appends into spare room, doubling it: the same keys and values as transformers' concatenating layer, through
    a prefill, decode steps, a crop and a batch selection (which DynamicLayer does on the views)."""
    import torch
    from transformers.cache_utils import DynamicLayer

    growing, plain = kv_reuse.growing_layer_class()(), DynamicLayer()
    generator = torch.Generator().manual_seed(0)

    def step(tokens: int, batch: int = 3):
        keys, values = (torch.randn(batch, 2, tokens, 4, generator=generator) for _ in range(2))
        got, want = growing.update(keys, values), plain.update(keys, values)
        for a, b in zip(got, want):
            assert torch.equal(a, b)

    step(40)  # a prefill: room for 2 x 40
    rooms = {growing._key_room.data_ptr()}
    for _ in range(45):  # decode steps: the room is reused until it is full (80), then doubled once
        step(1)
        rooms.add(growing._key_room.data_ptr())
    assert len(rooms) == 2 and growing._key_room.shape[-2] == 2 * 81
    growing.crop(-5), plain.crop(-5)
    step(2)
    index = torch.tensor([2, 0])
    growing.batch_select_indices(index), plain.batch_select_indices(index)
    step(1, batch=2)
    assert growing.get_seq_length() == plain.get_seq_length() == 83
