"""A tiny random llama with a real chat-templated tokenizer, built offline in a second (no downloads).

`make_tiny_model(folder)` writes config, safetensors weights, tokenizer and chat template into `folder`; any test
that needs a loadable model folder can use it. The tokenizer is a byte-level BPE trained in memory on a few lines,
so it encodes any text; like GPT-2's, it writes " 3" as one token after "Score:".
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "Score: 0", "Score: 1", "Score: 2", "Score: 3", "Score: 4", "Score: 5", "score: 0 1 2 3 4 5",
    "The response is relevant and answers the question. Score: 4",
    "The answer is wrong and not helpful at all. Score: 1",
    "user assistant system: you are a helpful assistant, write a short answer to the question.",
    "Review the user's question and the response using the additive 5-point scoring system.",
    "What is the capital of France? Paris is the capital of France.",
    "Write a poem about the sea, the wind and the sky.",
]


def make_tiny_model(folder: str | Path, *, seed: int = 0) -> Path:
    """Write a random 2-layer llama (hidden 16) and its tokenizer to `folder`; returns the folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|pad|>", eos_token="<|im_end|>",
                                        bos_token=None, unk_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
