"""The accelerator suite, the input-pipeline and the sampling-speed benchmarks run end to end (at toy
sizes, on the CPU) so that they cannot rot."""
import dataclasses
import importlib.util
import json
import os

from conftest import REPO, run_command

from scaling.config import MeshConfig
from scaling.models.registry import model_config
from scaling.train.loop import train


def test_accelerator_suite_runs_every_section(tmp_path):
    result = run_command("benchmarks.accelerator_suite", "--tiny", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "suite.jsonl").read_text().splitlines()]
    sections = {row["section"] for row in rows}
    assert sections == {"mfu", "archs", "context", "kernel"}
    archs = [row for row in rows if row["section"] == "archs"]
    assert archs[0]["arch"] == "gpt" and archs[0]["step_ratio"] == 1.0 and len(archs) >= 6
    assert {row["layers"] for row in rows if row["section"] == "mfu"} == {"unrolled (default)", "looped"}
    assert all(row["tokens_per_s"] > 0 for row in rows if row["section"] != "kernel")
    assert all(isinstance(row["forward_backward_ms"], float) for row in rows if row["section"] == "kernel")
    table = (tmp_path / "suite.md").read_text()
    assert all(f"### {section}" in table for section in sections)


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("suite", os.path.join(REPO, "benchmarks", "accelerator_suite.py"))
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)

    def broken(profile, memory):
        yield {"section": "mfu", "size": "tiny", "mfu": 0.5}
        raise AttributeError("module 'pallas' has no attribute 'CompilerParams'")

    def kernel(profile, memory):
        yield {"section": "kernel", "kernel": "chunked", "seq_len": 128, "forward_ms": 1.0}

    monkeypatch.setattr(suite, "SECTIONS", {"mfu": broken, "kernel": kernel})
    rows = suite.run(["mfu", "kernel"], suite.TINY, None, str(tmp_path))
    assert [row.get("failed") for row in rows] == [
        None, "AttributeError: module 'pallas' has no attribute 'CompilerParams'", None]
    assert [json.loads(line) for line in (tmp_path / "suite.jsonl").read_text().splitlines()] == rows
    table = (tmp_path / "suite.md").read_text()
    assert "| tiny |" in table and "failed: AttributeError" in table and "| chunked | 128 | 1 |" in table


def test_input_pipeline_benchmark_feeds_the_train_step(tmp_path):
    """The loader's batches go into the compiled step (sharding, dtypes and shapes agree) and both
    feeds are timed."""
    result = run_command("benchmarks.input_pipeline", "--tokenizers", "bytes", "--steps", "2", "--seq_len", "64",
                         "--batch_size", "4", "--fed_step", "--fed_rounds", "1", "--cache_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    loader, fed = (json.loads(line) for line in result.stdout.splitlines())
    assert loader["tokens_per_s_per_host"] > 0 and loader["bytes_per_token"] == 1.0
    assert fed["loader_step_s"] > 0 and fed["synthetic_step_s"] > 0 and fed["ratio"] > 0


def test_packing_benchmark_packs_the_split_each_round(tfds_text, tmp_path):
    """Every round packs the whole TFDS training split again (nothing cached) and checks its stream."""
    result = run_command("benchmarks.packing", "--data", tfds_text.name, "--data_dir", tfds_text.data_dir,
                         "--tokenizer", "bytes", "--workers", "0", "--rounds", "2", "--cache_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected_tokens = 1 + sum(len(text) + 1 for text in tfds_text.documents["train"])
    assert [(row["round"], row["tokens"], row["documents"], row["same_stream"]) for row in rows] == [
        (round_, expected_tokens, len(tfds_text.documents["train"]), True) for round_ in range(2)]
    assert not os.listdir(tmp_path)  # bytes need no tokenizer file, and the packed split is not cached


def test_sampling_speed_compares_trained_runs(tmp_path, tiny_train):
    """Two runs decode side by side; a routed model reports how many tokens its blocks took, while
    generating and on held-out text."""
    train_cfg = dataclasses.replace(tiny_train, data="pystdlib", eval_every=2)
    shape = dict(vocab_size=257, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=32)
    runs = [str(tmp_path / arch) for arch in ("gpt", "mod")]
    for arch, run_dir in zip(("gpt", "mod"), runs):
        train(model_config(arch, **shape), train_cfg, MeshConfig(), run_dir, max_steps=2)
    result = run_command("benchmarks.sampling_speed", "--runs", ",".join(runs), "--num_tokens", "4", "--rounds", "1",
                         "--temperature", "0.8")
    assert result.returncode == 0, result.stderr
    gpt, mod = (json.loads(line) for line in result.stdout.splitlines())
    assert gpt["time_ratio"] == 1.0 and gpt["routed_frac"] is None and gpt["routed_frac_held_out"] is None
    assert mod["temperature"] == 0.8 and mod["tokens_per_s"] > 0
    assert 0 <= mod["routed_frac"] <= 1 and 0 <= mod["routed_frac_held_out"] <= 1
