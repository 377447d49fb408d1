"""Benchmark: the pipeline's `hf` generation stage against a plain `model.generate` loop, same prompts, same run.

Prints tokens per second of both and their ratio. The pipeline number includes everything the stage does on top
of sampling: content keys, per-sample seeding, staging every batch to Parquet, the manifest.

    python -m builder.bench.generate [--data tsr-data] [--prompts 16] [--batch-size 8] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def plain_loop(model, tokenizer, texts: list[str], batch_size: int, max_new_tokens: int) -> tuple[int, float]:
    """The obvious alternative: batched, left-padded model.generate with sampling; returns (new tokens, seconds)."""
    import torch

    tokenizer.padding_side = "left"
    tokens, started = 0, time.perf_counter()
    for start in range(0, len(texts), batch_size):
        chats = [[{"role": "user", "content": t}] for t in texts[start : start + batch_size]]
        rendered = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        inputs = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=True, temperature=1.0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        eos = set(_eos_ids(model, tokenizer))
        for row in new.tolist():
            count = 0
            for token in row:
                count += 1
                if token in eos:
                    break
            tokens += count
    return tokens, time.perf_counter() - started


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    return [i for i in ids + [tokenizer.eos_token_id] if i is not None]


def measure(data: str = "tsr-data", prompts: int = 16, batch_size: int = 8, max_new_tokens: int = 64,
            rounds: int = 2) -> list[dict]:
    """Alternating rounds of both sides on the same prompts; the best round of each counts."""
    import polars as pl
    import torch

    from builder.backends.base import get_generator
    from builder.config import GenerateConfig
    from builder.snapshot import add_default
    from builder.stages.generate import generate
    from builder.stages.prompts import Chunking, default_prompts_path, import_prompts
    from builder.store import Store

    store = Store.open(data, create=True)
    with store.writing():
        m0 = add_default(store)
    texts = [line for line in pl.read_ndjson(default_prompts_path())["prompt"].to_list()][:prompts]
    generator = get_generator("hf", m0.folder(store), batch_size=batch_size)
    model, tokenizer = generator.model, generator.tokenizer
    print(f"model {m0.name} ({m0.snapshot_id}), dtype {model.dtype}, threads {torch.get_num_threads()}, "
          f"{len(texts)} prompts, batch {batch_size}, {max_new_tokens} new tokens", flush=True)
    plain_loop(model, tokenizer, texts[:batch_size], batch_size, 4)  # first-call kernel set-up, for neither side

    plain_rates, pipeline_rates = [], []
    for round_index in range(rounds):
        tokens, seconds = plain_loop(model, tokenizer, texts, batch_size, max_new_tokens)
        plain_rates.append(tokens / seconds)
        print(f"round {round_index + 1}: plain model.generate  {tokens:5d} tokens in {seconds:6.2f}s = "
              f"{tokens / seconds:6.1f} tok/s", flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            bench_store = Store.open(Path(scratch) / "store", create=True)
            with bench_store.writing():
                manifest, _ = import_prompts(bench_store, default_prompts_path(), chunking=Chunking(chunks=1))
                frame = pl.DataFrame({"prompt_id": [f"p{i}" for i in range(len(texts))], "text": texts})
                cfg = GenerateConfig(k=1, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens,
                                     seed=round_index, batch_size=batch_size)
                started = time.perf_counter()
                generate(bench_store, snapshot_id=m0.snapshot_id, prompts=frame, prompt_set=manifest.version,
                         sample_indices=[0], cfg=cfg, load_generator=lambda: generator, label="bench")
                seconds = time.perf_counter() - started
            tokens = int(pl.from_arrow(bench_store.read("generations"))["completion_tokens"].sum())
        pipeline_rates.append(tokens / seconds)
        print(f"round {round_index + 1}: tsr generate stage   {tokens:5d} tokens in {seconds:6.2f}s = "
              f"{tokens / seconds:6.1f} tok/s", flush=True)
    plain, pipeline = max(plain_rates), max(pipeline_rates)
    overhead = 1 - pipeline / plain
    return [{
        "what": f"hf generate stage, {len(texts)} prompts x {max_new_tokens} tokens (best of {rounds})",
        "tsr": f"{pipeline:.1f} tok/s", "alternative": "plain batched model.generate, same prompts",
        "baseline": f"{plain:.1f} tok/s", "ratio": pipeline / plain, "limit": "overhead <= 3%",
        "ok": overhead <= 0.03,
    }]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tsr-data", help="store holding (or receiving) the default model")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each side counts")
    args = parser.parse_args(argv)
    from builder.bench.table import Row, render

    print(render([Row(**row) for row in measure(args.data, args.prompts, args.batch_size, args.max_new_tokens,
                                                args.rounds)]))


if __name__ == "__main__":
    main()
