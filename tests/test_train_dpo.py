"""The thin TRL trainer on a tiny random llama: loss logged, weights changed, lineage recorded, reruns free."""

from __future__ import annotations

import json

import pytest
from safetensors.numpy import load_file

from builder.config import TrainConfig
from builder.snapshot import get_snapshot, list_snapshots
from builder.store import Store
from tests.test_loop import TINY_PROFILE
from tests.tiny_model import make_tiny_model
from train.data import pair_frame, to_conversational
from train.dpo import train_dpo


@pytest.fixture
def iteration_1(tsr, tmp_path, data_root):
    model = make_tiny_model(tmp_path / "tiny")
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    tsr("models", "add", str(model), "--name", "tiny", "--role", "m0")
    tsr("pairs", "--iter", "1", "--method", "tsr-past", "--m0", "tiny", "--profile", str(profile))
    store = Store.open(data_root)
    (pairs,) = store.manifests(table="pairs")
    return store, pairs


def test_pairs_load_as_conversational_preference_data(iteration_1):
    store, pairs = iteration_1
    frame = pair_frame(store, pairs.version)
    rows = to_conversational(frame)
    assert len(rows) == pairs.rows > 0
    assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["chosen"][0]["role"] == "assistant"
    assert {r["chosen"][0]["content"] for r in rows} <= set(frame["chosen"])


def test_dpo_trains_registers_and_is_idempotent(iteration_1, tmp_path, monkeypatch):
    store, pairs = iteration_1
    start = get_snapshot(store, pairs.config["policy"])
    cfg = TrainConfig(learning_rate=0.05, global_batch=2, per_device_batch=2, warmup_ratio=0.0, max_length=512,
                      bf16="false")
    # The reference log-probabilities are computed once and cached by TRL beside the dataset: in the run's scratch
    # folder inside the store, not in a temporary folder outside it.
    import tempfile

    import datasets.fingerprint

    outside = tmp_path / "tmp"
    outside.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(outside))
    monkeypatch.setattr(datasets.fingerprint, "_TEMP_DIR_FOR_TEMP_CACHE_FILES", None)
    with store.writing():
        result = train_dpo(store, pairs.version, start, cfg, name="M1-test")
    assert result.trained
    assert list(outside.iterdir()) == []
    assert not (store.root / result.snapshot.path / "_trainer").exists()
    assert result.metrics["steps"] >= 1 and result.metrics["loss"] is not None
    assert result.metrics["rewards/margins"] is not None and result.metrics["rewards/accuracies"] is not None

    before = load_file(str(store.root / start.path / "model.safetensors"))
    after = load_file(str(store.root / result.snapshot.path / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = [name for name in before if not (before[name] == after[name]).all()]
    assert len(changed) == len(before), f"unchanged tensors: {set(before) - set(changed)}"

    snapshot = result.snapshot
    assert snapshot.parent_snapshot_id == start.snapshot_id and snapshot.pair_version == pairs.version
    assert snapshot.run_id == result.run_id and not snapshot.temporary
    record = json.loads((store.root / snapshot.path / "tsr_training.json").read_text())
    assert record["run_id"] == result.run_id and record["metrics"] == result.metrics
    (run,) = store.read("runs").to_pylist()
    assert run["output_snapshot_id"] == snapshot.snapshot_id and run["data_versions"] == [pairs.version]

    with store.writing():
        again = train_dpo(store, pairs.version, start, cfg, name="M1-test")
    assert not again.trained and again.snapshot.snapshot_id == snapshot.snapshot_id
    assert len(list_snapshots(store)) == 2


@pytest.mark.gpu
def test_dpo_on_cuda_in_bf16(iteration_1):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    store, pairs = iteration_1
    start = get_snapshot(store, pairs.config["policy"])
    cfg = TrainConfig(learning_rate=0.05, global_batch=2, per_device_batch=2, warmup_ratio=0.0, max_length=512,
                      bf16="auto")
    with store.writing():
        result = train_dpo(store, pairs.version, start, cfg)
    assert result.trained and result.metrics["loss"] is not None
