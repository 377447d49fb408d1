"""Benchmark: the judge stage (auto mode, cpu-demo settings) against plain transformers calls on the same inputs.

The alternative is what a judge loop without cache reuse does: `model.generate` on every full judge prompt,
then, for each reply without a parsable score, one forward pass over prompt + justification + "Score:" to read
the digit probabilities. tsr does the same work reusing the rubric prefix's cache and the generation's cache
(builder/backends/kv_reuse.py). Both sides report the tokens their judgments cover (judge prompt, reply, and the
forced-score text where there is one) per second.

    python -m builder.bench.judge [--data tsr-data] [--judgments 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _setup(data: str, judgments: int):
    import polars as pl

    from builder.backends.base import get_generator
    from builder.snapshot import add_default
    from builder.stages.prompts import default_prompts_path
    from builder.store import Store

    store = Store.open(data, create=True)
    with store.writing():
        m0 = add_default(store)
    generator = get_generator("hf", m0.folder(store), batch_size=8)
    texts = pl.read_ndjson(default_prompts_path())["prompt"].to_list()[:judgments]
    return m0, generator, texts


def plain_judge(generator, items: list[tuple[str, str]], template: str, cfg) -> tuple[int, float]:
    """The alternative: plain batched model.generate, then a plain forward per forced score; (tokens, seconds)."""
    import torch

    from builder import judging

    model, tokenizer = generator.model, generator.tokenizer
    tokens, started = 0, time.perf_counter()
    bridge = list(generator.score_tokens.bridge)
    digits = list(generator.score_tokens.digits)
    for start in range(0, len(items), cfg.batch_size):
        chunk = items[start : start + cfg.batch_size]
        chats = [[{"role": "user", "content": judging.render_template(template, p, r)}] for p, r in chunk]
        rendered = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        inputs = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=True, temperature=cfg.temperature, top_p=1.0,
                                 max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        replies = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        forced = [text + judging.forced_continuation(reply)
                  for text, reply in zip(rendered, replies) if judging.parse_score(reply)[0] is None]
        tokens += int(inputs["attention_mask"].sum()) + sum(len(tokenizer.encode(r)) for r in replies)
        if forced:
            ids = [tokenizer.encode(text, add_special_tokens=False) + bridge for text in forced]
            with torch.inference_mode():
                logits = model(**generator._padded(ids), use_cache=False, logits_to_keep=1).logits[:, -1, digits]
            torch.softmax(logits.float(), dim=-1)
            tokens += sum(len(row) for row in ids)
    return tokens, time.perf_counter() - started


def covered_tokens(generator, store, judgment_ids: list[str], template: str) -> int:
    """Tokens the stored judgments cover: judge prompt + reply, plus the forced text where forced mode scored."""
    import polars as pl

    from builder import judging

    judgments = pl.from_arrow(store.read("judgments")).filter(pl.col("judgment_id").is_in(judgment_ids))
    generations = pl.from_arrow(store.read("generations").select(["generation_id", "prompt_id", "text"]))
    prompts = pl.from_arrow(store.read("prompts").select(["prompt_id", "text"])).rename({"text": "prompt"})
    rows = judgments.join(generations, on="generation_id").join(prompts, on="prompt_id")
    total = 0
    for row in rows.iter_rows(named=True):
        messages = [{"role": "user", "content": judging.render_template(template, row["prompt"], row["text"])}]
        prompt = generator._encode(generator.render(messages))
        total += len(prompt) + len(generator._encode(row["raw_reply"]))
        if row["scored_by"] == "forced":
            total += len(generator._encode(generator.render(messages, judging.forced_continuation(row["raw_reply"]))))
    return total


def measure(data: str = "tsr-data", judgments: int = 16) -> list[dict]:
    import polars as pl

    from builder.config import GenerateConfig, load_profile
    from builder.stages.generate import generate
    from builder.stages.judge import judge, template_text
    from builder.stages.prompts import Chunking, default_prompts_path, import_prompts
    from builder.store import Store

    m0, generator, _texts = _setup(data, judgments)
    cfg = load_profile("cpu-demo").judge
    template = template_text(cfg)
    with tempfile.TemporaryDirectory(prefix="tsr-bench-judge-") as scratch:
        store = Store.open(Path(scratch) / "store", create=True)
        with store.writing():
            manifest, _ = import_prompts(store, default_prompts_path(), chunking=Chunking(chunks=1))
            prompts = pl.from_arrow(store.read("prompts").select(["prompt_id", "text"])).head(judgments)
            gen = generate(store, snapshot_id=m0.snapshot_id, prompts=prompts, prompt_set=manifest.version,
                           sample_indices=[0], cfg=GenerateConfig(k=1, max_new_tokens=64, batch_size=8),
                           load_generator=lambda: generator, label="bench responses")
            responses = pl.from_arrow(store.read("generations").select(["generation_id", "prompt_id", "text"]))
            items = [(p, r) for p, r in responses.join(prompts.rename({"text": "prompt"}), on="prompt_id")
                     .select("prompt", "text").iter_rows()]
            # warm both paths once (first-call kernel set-up is not what either side costs per judgment)
            plain_judge(generator, items[:2], template, cfg)
            plain_tokens, plain_seconds = plain_judge(generator, items, template, cfg)
            started = time.perf_counter()
            result = judge(store, judge_id=m0.snapshot_id, generation_ids=gen.generation_ids, cfg=cfg,
                           load_generator=lambda: generator, label="bench judge")
            seconds = time.perf_counter() - started
        tokens = covered_tokens(generator, store, result.judgment_ids, template)
    ours, theirs = tokens / seconds, plain_tokens / plain_seconds
    return [{
        "what": f"judge stage, {len(items)} judgments (auto mode, cpu-demo)",
        "tsr": f"{ours:.0f} tok/s ({seconds:.1f} s)",
        "alternative": "plain model.generate + a raw forward per forced score",
        "baseline": f"{theirs:.0f} tok/s ({plain_seconds:.1f} s)",
        "ratio": ours / theirs, "limit": "", "ok": True,
    }]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tsr-data")
    parser.add_argument("--judgments", type=int, default=16)
    args = parser.parse_args(argv)
    from builder.bench.table import Row, render

    print(render([Row(**row) for row in measure(args.data, args.judgments)]))


if __name__ == "__main__":
    main()
