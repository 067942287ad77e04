"""Bad checkpoints: each is one line naming the file and the problem, exit 2, and nothing is built or timed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from support import llama
from teswap.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small Llama saved whole, and sharded with an index."""
    torch.manual_seed(3)
    model = LlamaForCausalLM(llama())
    whole, sharded = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("sharded")
    model.save_pretrained(whole)
    model.save_pretrained(sharded, max_shard_size="100KB")
    return whole, sharded


def copy_of(directory, tmp_path):
    return shutil.copytree(directory, tmp_path / "checkpoint")


def one_line_exit_2(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("teswap: error: "), captured.err
    assert "Traceback" not in captured.err
    return captured.err


def check(directory) -> list[str]:
    return ["check", "--model", str(directory), "--no-record", "--gen-tokens", "0", "--seq-len", "16"]


def test_a_good_checkpoint_passes_the_checks(saved, capsys):
    whole, sharded = saved
    assert main(check(whole)) == 0 and main(check(sharded)) == 0
    capsys.readouterr()


def test_a_garbage_safetensors_file_is_one_line(saved, tmp_path, capsys):
    directory = copy_of(saved[0], tmp_path)
    (directory / "model.safetensors").write_bytes(b"\x89garbage, not a tensor file" * 40)
    err = one_line_exit_2(capsys, check(directory))
    assert "model.safetensors: not a safetensors file" in err


def test_a_truncated_safetensors_file_is_one_line(saved, tmp_path, capsys):
    directory = copy_of(saved[0], tmp_path)
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a download cut short
    err = one_line_exit_2(capsys, check(directory))
    assert "model.safetensors: truncated safetensors file: tensor " in err
    path.write_bytes(path.read_bytes()[:100])  # cut inside the header
    err = one_line_exit_2(capsys, check(directory))
    assert "model.safetensors: truncated safetensors file: its header needs" in err


def test_a_missing_shard_is_one_line_and_nothing_is_timed(saved, tmp_path, capsys):
    directory = copy_of(saved[1], tmp_path)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (directory / shard).unlink()
    err = one_line_exit_2(capsys, check(directory))
    assert f"model.safetensors.index.json: shard {shard} is missing (1 of " in err
    results = tmp_path / "results"
    err = one_line_exit_2(capsys, ["bench", "--models", str(directory), "--results", str(results)])
    assert f"shard {shard} is missing" in err and not list(results.glob("*/*.jsonl"))  # no cell, no record


def test_weights_of_another_size_than_config_json_are_one_line(saved, tmp_path, capsys):
    directory = copy_of(saved[0], tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    err = one_line_exit_2(capsys, check(directory))
    assert "mlp.gate_proj.weight has shape [160, 64], but config.json's model_type 'llama'" in err
    assert "implies [96, 64]" in err


def test_config_and_weights_of_different_families_are_one_line(saved, tmp_path, capsys):
    """Qwen2 weights (q/k/v biases) under a Llama config.json would load with the biases dropped."""
    directory = tmp_path / "qwen-weights"
    qwen = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in llama().to_dict().items() if k != "model_type"}))
    qwen.save_pretrained(directory)
    shutil.copy(saved[0] / "config.json", directory / "config.json")
    capsys.readouterr()  # save_pretrained's own progress bar
    err = one_line_exit_2(capsys, check(directory))
    assert "the weights do not match config.json's model_type 'llama' (LlamaForCausalLM)" in err
    assert "6 tensors have no place in it (e.g. model.layers.0.self_attn.k_proj.bias" in err
    assert "different model families" in err


def test_a_checkpoint_missing_tensors_is_one_line(saved, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    directory = copy_of(saved[0], tmp_path)
    tensors = load_file(directory / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    err = one_line_exit_2(capsys, check(directory))
    assert "1 tensors it needs are in no safetensors file (e.g. model.layers.1.mlp.down_proj.weight)" in err


def test_pickled_weights_without_safetensors_are_refused_not_replaced_by_random_ones(saved, tmp_path, capsys):
    directory = copy_of(saved[0], tmp_path)
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"pickle")
    assert "pytorch_model.bin but no *.safetensors" in one_line_exit_2(capsys, check(directory))


def test_a_garbage_gguf_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TESWAP_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF but not really" * 10)
    assert f"{path}: cannot read it as GGUF" in one_line_exit_2(capsys, check(path))


def test_a_directory_with_config_json_alone_is_no_checkpoint_to_check(saved, tmp_path):
    from teswap.swap.sources import resolve_source

    directory = copy_of(saved[0], tmp_path)
    (directory / "model.safetensors").unlink()
    assert resolve_source(directory).weights_dir is None  # built from the seed, as before
