"""Runs fitted to device memory: microbatches are the same step, FSDP is the same math with the state
split, and the cheapest remat / microbatch setting that fits is chosen from the compiled step."""
import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import command_env
from test_cli import assert_usage_error, run
from test_sharding import tiny_run, train_on_mesh

from scaling import hardware, sharding
from scaling.config import MeshConfig, ModelConfig, TrainConfig, UsageError
from scaling.train import fitting
from scaling.train.run import Run

GIB = 2**30


# Adam's eps at 1e-3: with the default 1e-8, m / sqrt(v) turns a summation-order difference in a
# near-zero gradient into a whole update step, which would test float noise, not the accumulation.
ADAM_EPS = 1e-3


@pytest.fixture(scope="module")
def whole_batch(tiny_model):
    return train_on_mesh(tiny_model, MeshConfig(data=2), jax.devices()[:2], eps=ADAM_EPS)


def test_microbatches_give_the_same_losses_and_parameters(tiny_model, whole_batch):
    expected_losses, expected = whole_batch
    losses, state = train_on_mesh(tiny_model, MeshConfig(data=2), jax.devices()[:2], microbatches=4, eps=ADAM_EPS)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_fsdp_equals_data_parallel_and_splits_the_state(tiny_model):
    expected, _ = train_on_mesh(tiny_model, MeshConfig(data=1), jax.devices()[:1])
    data_losses, _ = train_on_mesh(tiny_model, MeshConfig(data=8))
    losses, state = train_on_mesh(tiny_model, MeshConfig(data=1, fsdp=8))
    np.testing.assert_allclose(data_losses, expected, rtol=1e-4)
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    qkv = state.params["blocks"]["layers"]["block_0"]["attn"]["qkv"]["kernel"]
    layers, d, _, heads, d_head = qkv.shape
    assert sharding.shard_shapes(qkv) == {(layers, d // 8, 3, heads, d_head)}
    mu = state.opt_state[1][0].mu["embed"]["embedding"]
    assert sharding.shard_shapes(mu) == {(tiny_model.vocab_size, tiny_model.d_model // 8)}


def test_fsdp_divides_the_state_memory_per_device():
    cfg = ModelConfig(vocab_size=512, d_model=256, n_layers=2, n_heads=4, d_ff=704, seq_len=32)
    arguments = []
    for mesh in (MeshConfig(data=8), MeshConfig(data=1, fsdp=8)):
        compiled = tiny_run(cfg, mesh).compiled_train_step
        arguments.append(compiled.memory_analysis().argument_size_in_bytes)
    assert arguments[1] / arguments[0] == pytest.approx(1 / 8, rel=0.15)


@pytest.fixture(scope="module")
def sized():
    """A one-device model whose batch allows two roomy microbatch counts (8192 tokens), and the compiled
    memory of each candidate setting."""
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=1, n_heads=2, d_ff=192, seq_len=512)
    train_cfg = TrainConfig(batch_size=16, tokens=16 * 512, data="synthetic")
    mesh = sharding.make_mesh(MeshConfig(data=1), jax.devices()[:1])
    memory = {}
    for remat, micro in [("none", 1), ("none", 2), ("dots", 1), ("full", 1), ("full", 16)]:
        run_ = Run(cfg.replace(remat=remat), dataclasses.replace(train_cfg, microbatches=micro), mesh)
        memory[remat, micro] = run_.memory_per_device()
    return cfg, train_cfg, memory


def fit_with(sized_fixture, budget, **changes):
    cfg, train_cfg, _ = sized_fixture
    cfg = cfg.replace(**{k: v for k, v in changes.items() if k == "remat"})
    train_cfg = dataclasses.replace(train_cfg, **{k: v for k, v in changes.items() if k == "microbatches"})
    return fitting.fit(cfg, train_cfg, MeshConfig(data=1), int(budget / fitting.HEADROOM) + 1, name="run tiny",
                       devices=jax.devices()[:1])


def test_fitting_takes_the_cheapest_setting_that_fits(sized):
    _, _, memory = sized
    assert memory["none", 2] < memory["none", 1] and memory["full", 16] < memory["none", 1]
    roomy = fit_with(sized, memory["none", 1])
    assert (roomy.run.model_cfg.remat, roomy.run.train_cfg.microbatches) == ("none", 1)
    tight = fit_with(sized, memory["none", 1] - 1)
    chosen = (tight.run.model_cfg.remat, tight.run.train_cfg.microbatches)
    assert chosen == ("none", 2) or memory[chosen] < memory["none", 1]
    assert tight.bytes_per_device <= memory["none", 1] - 1 and tight.gib_per_device == tight.bytes_per_device / GIB


def test_explicit_settings_are_checked_not_changed(sized):
    _, _, memory = sized
    kept = fit_with(sized, memory["full", 1], remat="full", microbatches=1)
    assert (kept.run.model_cfg.remat, kept.run.train_cfg.microbatches) == ("full", 1)
    with pytest.raises(UsageError, match="--remat: run tiny needs"):
        fit_with(sized, memory["none", 1] - 1, remat="none", microbatches=1)


def test_a_run_that_cannot_fit_names_the_run_and_the_fixes(sized):
    _, _, memory = sized
    with pytest.raises(UsageError, match=r"--batch_size: run tiny needs .* GiB per device.*fsdp"):
        fit_with(sized, memory["full", 16] // 2)


def test_fitting_prefers_fsdp_when_the_replicated_state_does_not_fit():
    cfg = ModelConfig(vocab_size=512, d_model=256, n_layers=2, n_heads=4, d_ff=704, seq_len=32)
    train_cfg = TrainConfig(batch_size=8, tokens=8 * 32, data="synthetic")
    replicated = tiny_run(cfg, MeshConfig(data=8)).memory_per_device()
    fitted = fitting.fit(cfg, train_cfg, MeshConfig(data=8), int(0.5 * replicated / fitting.HEADROOM))
    assert fitted.mesh_cfg == MeshConfig(data=1, fsdp=8) and "fsdp=8" in fitted.note
    assert fitted.bytes_per_device <= 0.5 * replicated


@pytest.mark.parametrize("args, flag", [
    (["--device_memory_gib", "0.000001", "--d_model", "32", "--n_layers", "1", "--n_heads", "1"], "--batch_size"),
    (["--microbatches", "3"], "--microbatches"),
    (["--mesh", "data=1,fsdp=8", "--d_model", "36", "--n_heads", "2"], "--mesh"),
])
def test_bad_fitting_input_is_one_line_and_writes_nothing(tmp_path, args, flag):
    result = run("experiments.train", "--data", "synthetic", *args, "--workdir", str(tmp_path / "run"), devices=8)
    assert_usage_error(result, flag)
    assert not (tmp_path / "run").exists()


def test_dry_run_for_a_target_fits_every_run_to_its_memory(tmp_path):
    """--target h100:8 plans on 8 compile-only H100s with jax's CUDA plugin, else (as in CI) on 8 fake
    CPU devices, and says which; each run's line is out (stdout piped, as in a batch job's log) while
    the next runs are fitted."""
    command = [sys.executable, "-m", "experiments.isoflop", "--budget", "2e12", "--seq_len", "64", "--data",
               "synthetic", "--num_sizes", "3", "--target", "h100:8", "--device_memory_gib", "40", "--dry_run",
               "--workdir", str(tmp_path / "s")]
    env = {key: value for key, value in command_env(8).items() if key != "PYTHONUNBUFFERED"}
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        first = process.stdout.readline()
        running = process.poll() is None
        rest, stderr = process.communicate()
    result = subprocess.CompletedProcess(command, process.returncode, first + rest, stderr)
    assert result.returncode == 0, result.stderr
    assert first.startswith("[1/3] fitted gpt-") and running
    header, *rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("run_id", "gpt-"))]
    assert header[10:13] == ["remat", "micro", "GiB/dev"]
    assert rows and all(row[10] == "none" and row[11] == "1" and float(row[12]) > 0 for row in rows)
    fitted = [line for line in result.stdout.splitlines() if " fitted " in line]
    assert [line.split()[:3] for line in fitted] == [[f"[{i}/3]", "fitted", f"{row[0]}:"] for i, row in
                                                      enumerate(rows, 1)]
    assert all(f"{row[12]} GiB per device" in line for row, line in zip(rows, fitted))
    assert "wall time for 8 x h100 (40 of 80 GiB usable each)" in result.stdout
    cpu = hardware.compile_only_devices(hardware.ACCELERATORS["h100"], 8) is None
    compiler = "XLA:CPU on 8 fake devices" if cpu else "XLA:GPU for 8 compile-only NVIDIA H100"
    assert f"memory planned by {compiler}" in result.stdout
    assert not (tmp_path / "s").exists()
