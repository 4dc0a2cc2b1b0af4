"""A switch run through the real loop (named MoE metrics, active params), and its distillation into a gpt."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments.distill import distill
from scaling.config import MeshConfig, TrainConfig, UsageError
from scaling.models.registry import get_architecture, model_config
from scaling.models.switch import dense_student_config, dense_student_params
from scaling.nn.stack import layer_params
from scaling.train.loop import train

SWITCH = model_config("switch", d_model=32, n_layers=3, n_heads=2, d_ff=64, seq_len=32, num_experts=4, group_size=32)
TRAIN = TrainConfig(tokens=6 * 8 * 32, batch_size=8, learning_rate=1e-2, data="synthetic", eval_batches=1, log_every=2)
MESH = MeshConfig(data=2, expert=4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher = train(SWITCH, TRAIN, MESH, str(root / "switch"))
    baseline = train(dense_student_config(SWITCH), TRAIN, MESH, str(root / "gpt"))
    return root, teacher, baseline


def test_switch_run_logs_moe_metrics_and_counts(runs):
    root, teacher, _ = runs
    with open(root / "switch" / "metrics.jsonl") as f:
        record = json.loads(f.readline())
    expected = {"loss", "balance_loss", "dropped_frac", "router_entropy"} | {f"expert_load/{i}" for i in range(4)}
    assert expected <= set(record)
    assert sum(record[f"expert_load/{i}"] for i in range(4)) == pytest.approx(1.0)
    assert teacher["params"] > teacher["active_params"] == get_architecture("switch").counts(SWITCH).active_params


@pytest.mark.parametrize("scan", [True, False])
def test_student_starts_from_the_non_expert_weights(scan):
    teacher_cfg = dataclasses.replace(SWITCH, scan_layers=scan)
    tokens = np.zeros((1, SWITCH.seq_len), np.int32)
    student_cfg = dense_student_config(teacher_cfg)
    teacher = nn.unbox(jax.jit(get_architecture("switch").model(teacher_cfg).init)(jax.random.key(0), tokens))
    student = nn.unbox(jax.jit(get_architecture("gpt").model(student_cfg).init)(jax.random.key(1), tokens))
    teacher, student = teacher["params"], student["params"]
    merged = dense_student_params(teacher_cfg, teacher, student_cfg, student)
    taught = layer_params(teacher["blocks"], 3, 2)
    block = lambda params, l: layer_params(params["blocks"], 3, 1)[l]
    assert "moe" in taught[1] and "mlp" in taught[0] and "mlp" in taught[2]
    np.testing.assert_array_equal(block(merged, 1)["attn"]["qkv"]["kernel"], taught[1]["attn"]["qkv"]["kernel"])
    np.testing.assert_array_equal(block(merged, 0)["mlp"]["down"]["kernel"], taught[0]["mlp"]["down"]["kernel"])
    np.testing.assert_array_equal(block(merged, 2)["mlp"]["down"]["kernel"], taught[2]["mlp"]["down"]["kernel"])
    np.testing.assert_array_equal(block(merged, 1)["mlp"]["down"]["kernel"], block(student, 1)["mlp"]["down"]["kernel"])
    np.testing.assert_array_equal(merged["embed"]["embedding"], teacher["embed"]["embedding"])


def test_distillation_reports_the_kept_fraction(runs):
    root, teacher, baseline = runs
    summary = distill(str(root / "switch"), str(root / "gpt"), str(root / "student"), MESH)
    assert summary["teacher_eval_loss"] == pytest.approx(teacher["final_eval_loss"], rel=1e-4)
    assert summary["baseline_eval_loss"] == pytest.approx(baseline["final_eval_loss"], rel=1e-4)
    gain = summary["baseline_eval_loss"] - summary["teacher_eval_loss"]
    assert summary["kept"] == pytest.approx((summary["baseline_eval_loss"] - summary["student_eval_loss"]) / gain)
    assert os.path.exists(root / "student" / "summary.json")
    with pytest.raises(UsageError, match="--baseline"):
        distill(str(root / "switch"), str(root / "switch"), str(root / "other"), MESH)


def test_the_student_is_fitted_to_the_device_memory_given(runs):
    root, _, _ = runs
    with pytest.raises(UsageError, match="--batch_size: run small needs"):
        distill(str(root / "switch"), str(root / "gpt"), str(root / "small"), MESH, device_memory_gib=1e-6)
    assert not os.path.exists(root / "small" / "metrics.jsonl")


def test_interrupted_distillation_resumes_to_the_same_student(runs):
    root, _, _ = runs
    teacher, baseline, workdir = str(root / "switch"), str(root / "gpt"), root / "resumed"
    assert distill(teacher, baseline, str(workdir), MESH, log_every=1, max_steps=3) is None
    assert not os.path.exists(workdir / "summary.json")
    before = (workdir / "metrics.jsonl").read_text().splitlines()
    resumed = distill(teacher, baseline, str(workdir), MESH, log_every=1)
    after = (workdir / "metrics.jsonl").read_text().splitlines()
    assert after[:3] == before and [json.loads(line)["step"] for line in after] == list(range(1, 7))  # not re-run
    whole = distill(teacher, baseline, str(root / "student"), MESH)
    assert resumed["student_eval_loss"] == pytest.approx(whole["student_eval_loss"], rel=1e-5)
