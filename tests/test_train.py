"""The training loop: resumed == uninterrupted, metrics and files as documented, refusal to mix runs."""
import dataclasses
import json
import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from scaling import compiler, data, hardware, optimizers, sample, sharding
from scaling.config import MeshConfig, TrainConfig, UsageError
from scaling.models.registry import get_architecture
from scaling.train import checkpoints, loop
from scaling.train.loop import train
from scaling.train.run import Run

METRIC_KEYS = {"step", "tokens", "flops", "loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_device",
               "mfu", "wall_s"}


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_params(run_dir, step):
    restored = ocp.StandardCheckpointer().restore(os.path.join(run_dir, "checkpoints", str(step), "default"))
    return restored["params"]


def test_resumed_run_equals_uninterrupted_run(tiny_model, tiny_train, tmp_path):
    mesh = MeshConfig(data=-1, model=2)
    whole = str(tmp_path / "whole")
    split = str(tmp_path / "split")
    summary = train(tiny_model, tiny_train, mesh, whole)
    first = train(tiny_model, tiny_train, mesh, split, max_steps=3)
    assert not first["complete"] and not os.path.exists(os.path.join(split, "summary.json"))
    resumed = train(tiny_model, tiny_train, MeshConfig(data=-1, model=4), split)

    steps = tiny_train.steps(tiny_model.seq_len)
    assert summary["complete"] and resumed["complete"] and resumed["steps"] == steps
    whole_metrics, split_metrics = read_metrics(whole), read_metrics(split)
    assert [m["step"] for m in split_metrics] == list(range(1, steps + 1))
    np.testing.assert_allclose([m["loss"] for m in split_metrics], [m["loss"] for m in whole_metrics], rtol=1e-5)
    assert resumed["final_eval_loss"] == pytest.approx(summary["final_eval_loss"], rel=1e-5)
    a, b = final_params(whole, steps), final_params(split, steps)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_a_checkpoint_on_cpus_compiles_nothing_and_restores_in_the_shards(tiny_model, tiny_train, tmp_path, caplog):
    """Orbax's replica-parallel saving slices each replicated array per device, compiling a slice
    program per device and shape; on CPUs, where the slices spare no copy, the state is saved whole."""
    run = Run(tiny_model, tiny_train, sharding.make_mesh(MeshConfig()))
    state = run.init_state()
    mngr = checkpoints.manager(str(tmp_path), keep=1, every=1)
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        checkpoints.save(mngr, 1, state)
        mngr.wait_until_finished()
    assert "Compiling" not in caplog.text
    restored = run.restore(mngr)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        assert x.sharding == y.sharding
        np.testing.assert_array_equal(x, y)


def test_a_run_reading_its_data_more_than_four_times_is_warned_of(capsys):
    loop._warn_of_repeats("r", "pystdlib", 4.0)
    assert capsys.readouterr().err == ""
    loop._warn_of_repeats("r", "pystdlib", 6.64)
    (line,) = capsys.readouterr().err.splitlines()
    assert "run r reads the training split of --data pystdlib 6.6 times" in line and "--data tfds:NAME" in line


def test_metrics_files_and_checkpoint_retention(tiny_model, tiny_train, tmp_path):
    run_dir = str(tmp_path / "run")
    summary = train(tiny_model, dataclasses.replace(tiny_train, keep_checkpoints=2), MeshConfig(), run_dir)
    metrics = read_metrics(run_dir)
    assert all(METRIC_KEYS <= set(m) for m in metrics)
    assert metrics[-1]["flops"] == pytest.approx(summary["flops_per_token"] * summary["tokens"])
    windows = len(data.make_source("synthetic", "train", tiny_model.seq_len))
    assert summary["epochs"] == pytest.approx(summary["steps"] * tiny_train.batch_size / windows)
    assert metrics[0]["mfu"] is None and metrics[0]["tflops_per_device"] > 0
    assert [m["step"] for m in metrics if m["eval_loss"] is not None] == [2, 4, 6, 8]
    # No pass of gpt looks ahead: its eval pass is the one sampling takes.
    assert "eval_causal_loss" not in metrics[-1] and summary["final_eval_causal_loss"] == summary["final_eval_loss"]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["6", "8"]
    config = json.loads(pathlib.Path(run_dir, "config.json").read_text())
    assert config["data_fingerprint"]["name"] == "synthetic" and "versions" in config
    assert tiny_model.unroll_layers is None and config["model"]["unroll_layers"] is True  # the CPU's, resolved
    assert config["hardware"].startswith(f"{jax.device_count()} x cpu (") and "AVX-512" in config["hardware"]
    # A finished run is not trained again.
    written = json.loads(pathlib.Path(run_dir, "summary.json").read_text())
    assert train(tiny_model, tiny_train, MeshConfig(), run_dir) == written
    # One ended before causal losses were recorded gets gpt's: its eval loss.
    earlier = {k: v for k, v in summary.items() if k != "final_eval_causal_loss"}
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(earlier, f)
    assert train(tiny_model, tiny_train, MeshConfig(), run_dir) == summary


def test_a_run_begun_with_the_layer_loop_looped_resumes_where_it_is_unrolled(tiny_model, tiny_train, tmp_path):
    """Looping the scan over the layers (a TPU's default) or unrolling it fits a run to its devices, like
    remat: a run begun looped resumes on a CPU, whose default unrolls."""
    run_dir = str(tmp_path / "run")
    train(dataclasses.replace(tiny_model, unroll_layers=False), tiny_train, MeshConfig(), run_dir, max_steps=2)
    assert train(tiny_model, tiny_train, MeshConfig(), run_dir)["complete"]
    assert json.loads(pathlib.Path(run_dir, "config.json").read_text())["model"]["unroll_layers"] is True


def test_refuses_a_workdir_holding_another_run(tiny_model, tiny_train, tmp_path):
    run_dir = str(tmp_path / "run")
    train(tiny_model, tiny_train, MeshConfig(), run_dir, max_steps=1)
    before = sorted(os.listdir(run_dir))
    with pytest.raises(UsageError, match="--workdir"):
        train(dataclasses.replace(tiny_model, d_model=128, d_ff=256), tiny_train, MeshConfig(), run_dir)
    assert sorted(os.listdir(run_dir)) == before


def test_refuses_a_run_written_by_the_previous_layout(tiny_model, tiny_train, tmp_path):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"model": {"arch": "gpt", "num_experts": 8}}))
    with pytest.raises(UsageError, match=f"--workdir: {run_dir} was written by an earlier version"):
        train(tiny_model, tiny_train, MeshConfig(), str(run_dir))
    assert sorted(os.listdir(run_dir)) == ["config.json"]


def test_runs_differing_only_in_learning_rate_and_seed_share_one_compiled_step(tiny_model, tiny_train):
    """The peak learning rate and the seed are arrays of the train state, not constants of the step, so
    a learning-rate search and its seeds compile one step (one compilation cache entry) for a shape."""
    mesh = sharding.make_mesh(MeshConfig(data=1), jax.devices()[:1])
    runs = [Run(tiny_model, dataclasses.replace(tiny_train, learning_rate=rate, seed=seed), mesh)
            for rate, seed in ((1e-2, 0), (3e-3, 7))]
    assert len({run.train_step().lower(run.abstract_state, run.batch_spec(), None).as_text() for run in runs}) == 1
    states = [run.init_state() for run in runs]
    np.testing.assert_allclose([s.learning_rate for s in states], [1e-2, 3e-3], rtol=1e-7)
    assert [int(s.seed) for s in states] == [0, 7]
    first, other = (s.params["embed"]["embedding"] for s in states)
    assert not np.allclose(first, other)


@pytest.mark.parametrize("arch, reference", [
    ("gpt", lambda cfg, steps, rate: optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, rate, round(cfg.warmup_frac * steps), steps), b1=cfg.b1, b2=cfg.b2,
        eps=cfg.eps, weight_decay=cfg.weight_decay, mask=optimizers.decay_mask)),
    ("ngpt", lambda cfg, steps, rate: optax.adam(optax.cosine_decay_schedule(rate, steps), b1=cfg.b1, b2=cfg.b2,
                                                 eps=cfg.eps)),
])
def test_a_recipe_at_peak_rate_one_scaled_by_the_rate_updates_as_the_recipe_at_that_rate(arch, reference):
    """What lets the train step hold the rate as an array: optax applies it last, to the whole update."""
    cfg, steps, rate = TrainConfig(grad_clip=0.5), 20, 3e-3
    tx, _ = get_architecture(arch).optimizer(cfg, steps)
    expected = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), reference(cfg, steps, rate))
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(4)}
    state, expected_state = tx.init(params), expected.init(params)
    for step in range(4):
        grads = jax.tree.map(lambda p: jnp.sin(p * (step + 2.0)), params)
        updates, state = tx.update(grads, state, params)
        expected_updates, expected_state = expected.update(grads, expected_state, params)
        for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(expected_updates)):
            np.testing.assert_allclose(rate * got, want, rtol=1e-6, atol=1e-9)
        params = optax.apply_updates(params, expected_updates)


@pytest.mark.parametrize("avx512", [False, True])
def test_cpu_steps_use_xla_kernels_where_the_cpu_lacks_avx512(avx512, monkeypatch, tiny_model, tiny_train):
    """On an AVX2 CPU without AVX-512 the train, eval and decode steps compile without YNNPACK fusions
    (scaling/compiler.py), which XLA:CPU emits for them by default and keeps where the CPU has AVX-512."""
    monkeypatch.setattr(hardware, "cpu_description", lambda: {"avx2": True, "avx512f": avx512})
    if not compiler._cpu_accepts(**compiler.CPU_OPTIONS):
        pytest.skip("this jaxlib has no YNNPACK fusions to turn off")
    run = Run(tiny_model, tiny_train, sharding.make_mesh(MeshConfig(data=1), jax.devices()[:1]))
    eval_step, eval_args = run.eval_step(), (run.abstract_state.params, run.batch_spec())
    assert ("__ynn_fusion" in eval_step.lower(*eval_args).compile().as_text()) == avx512
    assert ("__ynn_fusion" in run.compiled_train_step.as_text()) == avx512
    generate = sample.generation(sample.decoding_config(tiny_model, 12 + avx512), 4, 0.0, 0)  # uncached
    prompt, key = jax.ShapeDtypeStruct((2, 8), np.int32), jax.eval_shape(jax.random.key, 0)
    assert ("__ynn_fusion" in generate.lower(run.abstract_state.params, prompt, key).compile().as_text()) == avx512


def test_the_state_is_initialised_by_a_program_compiled_for_compile_speed_on_cpus(monkeypatch, tiny_model,
                                                                                 tiny_train):
    """The state's initialisation runs once, so on a CPU its program is compiled at -O0, with the options
    XLA takes (scaling/compiler.py); an option XLA refuses would fail it, so the options reach it."""
    run = Run(tiny_model, tiny_train, sharding.make_mesh(MeshConfig(data=1), jax.devices()[:1]))
    options = compiler.run_once_options(run.mesh)
    assert options["xla_backend_optimization_level"] == 0
    assert compiler.compiler_options(run.mesh).items() <= options.items()
    jax.block_until_ready(run.init_state())
    monkeypatch.setattr(compiler, "run_once_options", lambda mesh: {"no_such_option": 1})
    with pytest.raises(jax.errors.JaxRuntimeError, match="no_such_option"):
        run.init_state()


def test_compiled_steps_are_kept_apart_for_cpus_of_other_instruction_sets(monkeypatch, tmp_path):
    """XLA:CPU compiles for the host's instructions and jax's cache key does not name them, so a workdir
    moved to another CPU must not load what was compiled for this one (scaling/compiler.py)."""
    cpuinfo = pathlib.Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    assert ("avx2" in hardware.cpu_signature().split()) == (" avx2" in cpuinfo)
    kept = []
    monkeypatch.setattr(compiler.compilation_cache, "set_cache_dir", kept.append)
    for flags in ("sse4_2 avx2", "sse4_2 avx2 avx512f", "sse4_2 avx2"):
        monkeypatch.setattr(hardware, "cpu_signature", lambda: f"x86_64 Some CPU {flags}")
        compiler.keep_compiled(str(tmp_path))
    assert kept[0] == kept[2] != kept[1] and all(path.startswith(str(tmp_path / "cpu-")) for path in kept)
