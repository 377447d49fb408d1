"""What both trainers share: the storage dtype a trained snapshot keeps, read without loading the model."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.tiny_model import make_tiny_model
from train.common import stored_dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("in_config", [True, False])
def test_stored_dtype_reads_what_from_pretrained_auto_reads(tmp_path, dtype, in_config):
    folder = make_tiny_model(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.to(dtype).save_pretrained(folder, safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    if not in_config:  # older or hand-written configs: the weights tell
        config.pop("dtype", None)
        config.pop("torch_dtype", None)
        (folder / "config.json").write_text(json.dumps(config))
    assert stored_dtype(str(folder)) == dtype
    assert AutoModelForCausalLM.from_pretrained(folder, dtype="auto").dtype == dtype
