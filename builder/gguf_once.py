"""Converting the embedded GGUF with transformers, reading the file once instead of four times.

`AutoTokenizer.from_pretrained(..., gguf_file=...)` and `AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`
each parse the whole GGUF again (the config, the tokenizer's config, the tokenizer, the tensors): about 2 s a parse
on a 2-core CPU, most of it gguf-py decoding the 49,152-entry vocabulary and the merges one field at a time. Mapping
the tensor names then rebuilds gguf-py's `TensorNameMap` for every submodule of the model (about 300 times for the
30-layer SmolLM2). Inside `read_once()` a parse and a name map are made once per file and per architecture and
shared; what transformers builds from them is unchanged. Outside the block nothing is patched.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator

from builder.environment import attribute


@contextlib.contextmanager
def read_once() -> Iterator[None]:
    import gguf
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    reader = functools.cache(gguf.GGUFReader)  # read-only: a memory map and the parsed fields
    name_map = functools.cache(gguf.get_tensor_name_map)  # only looked up
    metadata: dict[str, dict] = {}
    load_checkpoint = gguf_utils.load_gguf_checkpoint

    def load_gguf_checkpoint(path, return_tensors=False, *args, **kwargs):
        if return_tensors or args or kwargs:
            return load_checkpoint(path, return_tensors, *args, **kwargs)
        if str(path) not in metadata:
            metadata[str(path)] = load_checkpoint(path, False)
        return copy.deepcopy(metadata[str(path)])  # callers pop and edit what they get

    with (attribute(gguf, "GGUFReader", reader), attribute(gguf, "get_tensor_name_map", name_map),
          attribute(gguf_utils, "load_gguf_checkpoint", load_gguf_checkpoint)):
        yield
