"""`tsr models add` refuses a folder that will not load, before anything is written (issue 15, item 5).

Each bad folder is the tiny llama of tests/tiny_model.py broken one way. Every refusal is a non-zero exit with at
most two lines and no traceback, creates no store where none existed, and leaves an existing store byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.tiny_model import make_tiny_model


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One tiny model built once; every test copies it (a plain copy, no symlinks)."""
    return make_tiny_model(tmp_path_factory.mktemp("pristine") / "tiny")


@pytest.fixture
def folder(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models" / "tiny"
    shutil.copytree(pristine, copy)
    return copy


def _tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under the store root, except the lock file (its presence is not content)."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and path.name != ".lock"}


# ---- ways to break a good folder (each returns the SOURCE argument to pass) ---------------------------------------


def no_tokenizer(folder: Path) -> str:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).unlink()
    return str(folder)


def broken_tokenizer_json(folder: Path) -> str:
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "nonsense"}}')
    return str(folder)


def random_weights(folder: Path) -> str:
    weights = folder / "model.safetensors"
    weights.write_bytes(os.urandom(weights.stat().st_size))
    return str(folder)


def truncated_weights(folder: Path) -> str:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return str(folder)


def weights_header_not_json(folder: Path) -> str:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    weights.write_bytes(data[:8] + b"x" * length + data[8 + length:])
    return str(folder)


def remote_code_model_type(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "totally-unknown"
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_x.py").write_text("raise SystemExit('remote code must never be imported')\n")
    return str(folder)


def unknown_model_type(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "totally-unknown"
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def no_model_type(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    del config["model_type"]
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def config_not_json(folder: Path) -> str:
    (folder / "config.json").write_text("model_type: llama\n")
    return str(folder)


def no_config(folder: Path) -> str:
    (folder / "config.json").unlink()
    return str(folder)


def pickle_only(folder: Path) -> str:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    return str(folder)


def symlink_to_outside_file(folder: Path) -> str:
    secret = folder.parent.parent / "secret.txt"
    secret.write_text("not part of any model\n")
    (folder / "vocab_extra.txt").symlink_to(secret)
    return str(folder)


def symlink_to_system_file(folder: Path) -> str:
    (folder / "notes.txt").symlink_to("/etc/hostname" if Path("/etc/hostname").exists() else "/etc/passwd")
    return str(folder)


def symlink_to_outside_folder(folder: Path) -> str:
    outside = folder.parent.parent / "elsewhere"
    outside.mkdir()
    (outside / "data.txt").write_text("outside\n")
    (folder / "extra").symlink_to(outside, target_is_directory=True)
    return str(folder)


def symlink_named_like_ignored_file(folder: Path) -> str:
    (folder / "README.md").symlink_to("/etc/passwd")
    return str(folder)


def broken_symlink(folder: Path) -> str:
    (folder / "special_tokens_map.json").symlink_to(folder / "does-not-exist.json")
    return str(folder)


def a_fifo(folder: Path) -> str:
    os.mkfifo(folder / "pipe.json")
    return str(folder)


def missing_relative_path(folder: Path) -> str:
    return "./missing/model"


def missing_absolute_path(folder: Path) -> str:
    return str(folder.parent / "not-there")


def missing_nested_path(folder: Path) -> str:
    return "some/deep/model/folder"


def missing_path_with_trailing_slash(folder: Path) -> str:
    return "missing-model/"


def a_file_not_a_folder(folder: Path) -> str:
    return str(folder / "model.safetensors")


BREAKS = [no_tokenizer, broken_tokenizer_json, random_weights, truncated_weights, weights_header_not_json,
          remote_code_model_type, unknown_model_type, no_model_type, config_not_json, no_config, pickle_only,
          symlink_to_outside_file, symlink_to_system_file, symlink_to_outside_folder,
          symlink_named_like_ignored_file, broken_symlink, a_fifo, missing_relative_path, missing_absolute_path,
          missing_nested_path, missing_path_with_trailing_slash, a_file_not_a_folder]
EXPECTED = {  # a word of the one-line reason each break must give
    no_tokenizer: "no tokenizer", broken_tokenizer_json: "tokenizer does not load",
    random_weights: "not a readable safetensors", truncated_weights: "not a readable safetensors",
    weights_header_not_json: "not a readable safetensors", remote_code_model_type: "remote code",
    unknown_model_type: "unknown model type", no_model_type: "no model_type", config_not_json: "not valid JSON",
    no_config: "no config.json", pickle_only: "no .safetensors", symlink_to_outside_file: "outside the model folder",
    symlink_to_system_file: "outside the model folder", symlink_to_outside_folder: "outside the model folder",
    symlink_named_like_ignored_file: "outside the model folder", broken_symlink: "broken symlink",
    a_fifo: "not a regular file", missing_relative_path: "no such model folder",
    missing_absolute_path: "no such model folder", missing_nested_path: "no such model folder",
    missing_path_with_trailing_slash: "no such model folder", a_file_not_a_folder: "not a model folder",
}


def _assert_refused(result, reason: str) -> None:
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0, result.output
    assert 1 <= len(lines) <= 2, result.output
    assert "Traceback" not in result.output and lines[0].startswith("Error: "), result.output
    assert reason in result.output, result.output


@pytest.mark.parametrize("break_it", BREAKS, ids=lambda f: f.__name__)
def test_refused_without_creating_a_store(break_it, folder, tsr, data_root, monkeypatch):
    monkeypatch.chdir(folder.parent.parent)  # relative paths resolve here, where no such folder exists
    source = break_it(folder)
    _assert_refused(tsr("models", "add", source, expect=None), EXPECTED[break_it])
    assert not data_root.exists()


@pytest.fixture
def existing_store(pristine, tmp_path, tsr, data_root) -> dict[str, str]:
    good = tmp_path / "good" / "tiny"
    shutil.copytree(pristine, good)
    tsr("models", "add", str(good), "--name", "good", "--role", "m0")
    return _tree_hashes(data_root)


@pytest.mark.parametrize("break_it", BREAKS, ids=lambda f: f.__name__)
def test_refused_leaving_an_existing_store_unchanged(break_it, existing_store, folder, tsr, data_root, monkeypatch):
    monkeypatch.chdir(folder.parent.parent)
    source = break_it(folder)
    _assert_refused(tsr("models", "add", source, expect=None), EXPECTED[break_it])
    assert _tree_hashes(data_root) == existing_store


@pytest.mark.parametrize("args, reason", [
    (["--name", ""], "--name must not be empty"),
    (["--name", "   "], "--name must not be empty"),
    (["--name", "two\nlines"], "printable"),
    (["--revision", "main"], "--revision applies only to a Hub model id"),
], ids=["empty", "blank", "newline", "revision-on-folder"])
def test_bad_flags_refused_without_creating_a_store(args, reason, folder, tsr, data_root):
    _assert_refused(tsr("models", "add", str(folder), *args, expect=None), reason)
    assert not data_root.exists()


def test_not_a_hub_id_is_refused_offline(tsr, data_root, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _assert_refused(tsr("models", "add", "bad name!", expect=None), "not a Hub model id")
    (tmp_path / "org").mkdir()  # `org/name` with a local folder `org`: a missing local folder, not a Hub id
    _assert_refused(tsr("models", "add", "org/name", expect=None), "no such model folder")
    assert not data_root.exists()


def test_good_folder_adds_and_lists(folder, tsr, data_root):
    added = tsr("models", "add", str(folder), "--name", " tiny ").output.strip()
    assert added.startswith("snapshot ") and added.endswith("tiny  (external)")
    snapshot_id = added.split()[1]
    listed = tsr("models", "list").output
    assert snapshot_id in listed and "tiny" in listed
    stored = data_root / "snapshots" / snapshot_id
    assert sorted(p.name for p in stored.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert (stored / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(stored)


def test_symlink_inside_the_folder_is_copied_as_a_file(folder, tsr, data_root):
    (folder / "chat_template.jinja").rename(folder / "template.real")
    (folder / "chat_template.jinja").symlink_to("template.real")
    snapshot_id = tsr("models", "add", str(folder)).output.split()[1]
    copied = data_root / "snapshots" / snapshot_id / "chat_template.jinja"
    assert not copied.is_symlink() and copied.read_text() == (folder / "template.real").read_text()
    assert "tiny" in tsr("models", "list").output  # default name: the folder's name


def test_hf_cache_snapshot_folder_is_accepted(pristine, tmp_path, tsr, data_root):
    """A folder laid out like ~/.cache/huggingface/hub/models--org--name/snapshots/<sha>/ (links into blobs/)."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in pristine.iterdir():
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    snapshot_id = tsr("models", "add", str(snapshot), "--name", "cached").output.split()[1]
    stored = data_root / "snapshots" / snapshot_id
    assert not any(p.is_symlink() for p in stored.iterdir())
    assert (stored / "model.safetensors").read_bytes() == (pristine / "model.safetensors").read_bytes()
