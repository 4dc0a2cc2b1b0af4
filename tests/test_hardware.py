"""Compile-only devices: steps compiled for accelerators this host does not have, the way --dry_run
--target plans a pod. The compiling tests need jax's CUDA plugin or libtpu, which the README's
install does not bring (CI skips them; they ran where those were installed, README Running on a pod)."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import pytest

from scaling import hardware, sharding
from scaling.config import MeshConfig, TrainConfig
from scaling.models.registry import model_config
from scaling.models.tnl import layer_decays
from scaling.nn.linear_attention import linear_attention
from scaling.train import fitting

GIB = 2**30
H100, V5P = hardware.ACCELERATORS["h100"], hardware.ACCELERATORS["v5p"]
needs_cuda_plugin = pytest.mark.skipif(hardware.compile_only_devices(H100, 1) is None,
                                       reason="needs jax's CUDA plugin (compiles for an H100 without one)")
needs_libtpu = pytest.mark.skipif(hardware.compile_only_devices(V5P, 4) is None,
                                  reason="needs libtpu (compiles for a TPU without one)")


@pytest.mark.parametrize("chips, dims, shape", [(4, 3, "2x2x1"), (16, 3, "2x2x4"), (64, 3, "4x4x4"),
                                                (8, 2, "2x4"), (256, 2, "16x16")])
def test_a_tpu_slice_is_named_by_its_torus(chips, dims, shape):
    assert hardware._slice_shape(chips, dims) == shape


def fitted_step(cfg, devices):
    return fitting.fit(cfg, TrainConfig(batch_size=8, data="synthetic"), MeshConfig(data=len(devices)), 80 * GIB,
                       devices=devices)


@needs_cuda_plugin
@pytest.mark.parametrize("remat, forwards", [("none", 1), ("full", 2)])
def test_a_step_compiled_for_a_gpu_it_does_not_have_runs_cudnn_attention(tiny_model, remat, forwards):
    """The attention follows the devices compiled for, not this host: cuDNN's flash attention, whose
    forward the scanned blocks keep for the backward pass unless remat full recomputes it. The scan
    over the layers is unrolled there unless told."""
    devices = hardware.compile_only_devices(H100, 8)
    assert len(devices) == 8 and devices[0].device_kind == "NVIDIA H100 80GB HBM3"
    assert fitted_step(tiny_model, devices).run.model_cfg.unroll_layers is True
    fitted = fitted_step(dataclasses.replace(tiny_model, dtype="bfloat16", remat=remat, unroll_layers=False), devices)
    assert 0 < fitted.bytes_per_device < GIB
    hlo = fitted.run.compiled_train_step.as_text()
    assert hlo.count('custom_call_target="__cudnn$fmhaSoftmax"') == forwards
    assert hlo.count('custom_call_target="__cudnn$fmhaSoftmaxBackward"') == 1


@needs_cuda_plugin
def test_remat_saves_memory_in_the_unrolled_layer_scan_of_a_gpu(tiny_model):
    """Unrolled (a GPU's default), only remat's barriers keep XLA from merging the recomputation back
    into the forward pass."""
    devices = hardware.compile_only_devices(H100, 1)
    temporary = [fitted_step(dataclasses.replace(tiny_model, dtype="bfloat16", remat=remat), devices)
                 .run.compiled_train_step.memory_analysis().temp_size_in_bytes for remat in ("full", "none")]
    assert temporary[0] < temporary[1]


@needs_cuda_plugin
def test_expert_parallel_switch_compiles_for_gpus_it_does_not_have():
    """Without a GPU to autotune on, XLA:GPU's untuned Triton matmul tiles fail for these expert
    matmuls ("Couldn't find output tile sizes"); compile-only GPU steps use cuBLAS' (scaling/compiler.py)."""
    cfg = model_config("switch", d_model=448, n_layers=2, n_heads=7, d_ff=1216, seq_len=1024, vocab_size=256,
                       dtype="bfloat16")
    fitted = fitting.fit(cfg, TrainConfig(batch_size=512, data="synthetic"), MeshConfig(data=2, expert=8), 60 * GIB,
                         devices=hardware.compile_only_devices(H100, 16))
    assert fitted.run.train_cfg.microbatches == 1 and 0 < fitted.bytes_per_device < 60 * GIB


@needs_libtpu
def test_a_step_compiles_for_a_tpu_slice_it_does_not_have(tiny_model):
    devices = hardware.compile_only_devices(V5P, 8)
    assert len(devices) == 8 and hardware.by_device_kind(devices[0].device_kind) == V5P
    assert 0 < fitted_step(dataclasses.replace(tiny_model, dtype="bfloat16"), devices).bytes_per_device < GIB


@needs_cuda_plugin
def test_lightning_attention_kernels_compile_for_a_gpu_and_keep_the_state_out_of_memory():
    """The Pallas form lowers to Triton kernels for an H100 and, unlike the chunked form, plans next to
    no temporaries for its forward pass (every chunk's state stays in registers)."""
    devices = hardware.compile_only_devices(H100, 1)
    mesh = sharding.make_mesh(MeshConfig(), devices)
    x = jax.ShapeDtypeStruct((1, 4096, 2, 128), jnp.bfloat16, sharding=sharding.replicated(mesh))
    decay = jnp.asarray(layer_decays(2, 1)[0])

    def compiled(form):
        with sharding.activate(mesh):
            return jax.jit(lambda q, k, v: linear_attention(q, k, v, decay, form=form)).lower(x, x, x).compile()

    pallas, chunked = compiled("pallas"), compiled("chunked")
    assert "triton" in pallas.as_text()
    temporaries = [c.memory_analysis().temp_size_in_bytes for c in (pallas, chunked)]
    assert temporaries[0] < 2**16 < 2**24 < temporaries[1], temporaries


@needs_cuda_plugin
def test_tnl_trains_with_the_lightning_kernels_on_each_gpus_own_sequences_and_heads():
    """On GPUs `tnl`'s default form is the Pallas kernels: three per layer (forward, dQ, dK and dV), each
    on its device's shard, [batch / data, length, heads / model, d] (d 32 for q and k with LRPE)."""
    cfg = model_config("tnl", vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, seq_len=128,
                       dtype="bfloat16")
    fitted = fitting.fit(cfg, TrainConfig(batch_size=8, data="synthetic"), MeshConfig(data=4, model=2), 80 * GIB,
                         devices=hardware.compile_only_devices(H100, 8))
    kernels = [line for line in fitted.run.compiled_train_step.as_text().splitlines()
               if 'custom_call_target="__gpu$xla.gpu.triton"' in line]
    assert len(kernels) == 3 * cfg.n_layers
    assert all(re.search(r"= \(?bf16\[2,128,2,(16|32)\]", line) for line in kernels), kernels
