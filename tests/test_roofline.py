"""The roofline estimate reads FLOPs and bytes off optimized HLO: exact on small programs, the analytic
count on a scanned train step (XLA's own cost analysis counts a loop body once); its command estimates
a compile-only H100's step, or says in one line what it needs."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import REPO, command_env

from scaling import hardware, roofline, sharding
from scaling.config import MeshConfig, ModelConfig, TrainConfig
from scaling.models.registry import get_architecture
from scaling.train.run import Run


def _estimate(fn, *args):
    return roofline.estimate(jax.jit(fn).lower(*args).compile().as_text(), 1e12, 1e11)


def test_elementwise_pass_reads_and_writes_its_bytes():
    x = jnp.ones((1024, 1024))
    found = _estimate(lambda x: jnp.exp(x) * 2, x)
    assert found.flops == 0 and found.bytes == 2 * x.nbytes
    assert found.total_s == pytest.approx(2 * x.nbytes / 1e11)


def test_fusion_reads_only_the_slice_it_takes_of_a_reshaped_operand():
    x = jnp.ones((1024, 1024))
    found = _estimate(lambda x: jnp.exp(x.reshape(1024, 2, 512)[:, 1]), x)
    assert found.bytes == x.nbytes  # half of x read, half written


def test_loop_body_counts_its_trip_count_and_in_place_updates_their_slice():
    weights, x = jnp.ones((6, 128, 128)), jnp.ones((32, 128))

    def layers(x, weights):
        return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), h), x, weights)

    hlo = jax.jit(layers).lower(x, weights).compile().as_text()
    assert roofline.estimate(hlo, 1e12, 1e11).flops == 6 * 2 * 32 * 128 * 128
    module = roofline._Module(hlo)
    body = module.computations[next(i for i in module.computations[module.entry] if i.op == "while").attribute("body")]
    fused = {i: [j.op for j in module.computations[i.attribute("calls")]] for i in body if i.op == "fusion"}
    stacking = next(i for i, ops in fused.items() if "dynamic-update-slice" in ops)
    slicing = next(i for i, ops in fused.items() if "dynamic-slice" in ops)
    moved = {i.name: module.bytes_moved(i) for i in fused}
    index = 4  # the loop's s32 counter, an operand of both
    assert moved[stacking.name] == 2 * x.nbytes + index  # reads the new row, writes it in place: not the whole stack
    assert moved[slicing.name] == 2 * weights[0].nbytes + index  # reads one layer's weights, writes them


def test_scanned_train_step_holds_the_analytic_flops():
    cfg = ModelConfig(d_model=128, n_layers=3, n_heads=4, d_ff=352, seq_len=64, vocab_size=256)
    mesh = sharding.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    run = Run(cfg, TrainConfig(batch_size=4, tokens=4 * cfg.seq_len), mesh, total_steps=10)
    found = roofline.estimate(run.compiled_train_step.as_text(), 1e12, 1e11)
    analytic = get_architecture("gpt").counts(cfg).flops_per_token * 4 * cfg.seq_len
    assert found.flops == pytest.approx(analytic, rel=0.05)
    assert found.seconds["matmuls"] > 0 and found.total_s > found.seconds["matmuls"]


def test_command_estimates_a_gpu_step_or_names_what_it_needs():
    result = subprocess.run([sys.executable, "-m", "benchmarks.roofline", "--size", "125M", "--seq_len", "1024"],
                            cwd=REPO, env=command_env(), capture_output=True, text=True, timeout=600)
    if hardware.compile_only_devices(hardware.ACCELERATORS["h100"], 1) is None:
        assert result.returncode == 2 and result.stderr.startswith("error: --target needs jax's CUDA plugin")
        assert len(result.stderr.strip().splitlines()) == 1
    else:
        assert result.returncode == 0, result.stderr
        assert "MFU at most" in result.stdout and "matmuls" in result.stdout
