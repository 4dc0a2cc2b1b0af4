"""Distil a sparse run into a dense one: python -m experiments.distill --teacher DIR --baseline DIR --workdir DIR.

Switch Transformer sec. 4 (Table 6): a dense `gpt` of the teacher's base size, initialised from the
teacher's non-expert weights (embeddings, head, norms, attention, and the FFNs of the dense blocks; the
FFNs of the Switch blocks keep their fresh init), is trained on the teacher's data and token budget
with loss 0.75 x cross-entropy on the labels + 0.25 x cross-entropy on the teacher's soft targets
(its eval-mode probabilities). The teacher and the dense baseline are finished runs of
experiments.train (switch and gpt of the same shape and budget). The student, teacher and baseline
are evaluated on the same held-out batches; `kept` = (L_baseline - L_student) / (L_baseline - L_teacher)
is the fraction of the sparse model's gain the dense student keeps (the paper: ~30%).
Writes <workdir>/metrics.jsonl, <workdir>/checkpoints (orbax) and <workdir>/summary.json; re-running
resumes an interrupted student from its latest checkpoint, and a finished workdir is not trained again.
"""
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import optax
from absl import flags

from experiments import cli
from scaling import data, sharding
from scaling.config import MeshConfig, ModelConfig, TrainConfig, UsageError
from scaling.models.registry import get_architecture
from scaling.train import checkpoints
from scaling.train.loop import Evaluator
from scaling.train.metrics import MetricsLog
from scaling.train.state import abstract_state, create_state
from scaling.train.steps import token_cross_entropy

SOFT_WEIGHT = 0.25  # teacher soft targets; 1 - SOFT_WEIGHT on the labels (Switch Table 6)


def load_run(run_dir: str, mesh, arch: str):
    """(model config, train config, final params laid out on `mesh`) of a finished run of `arch`."""
    path = os.path.join(run_dir, "config.json")
    flag = "--teacher" if arch == "switch" else "--baseline"
    if not os.path.exists(os.path.join(run_dir, "summary.json")):
        raise UsageError(flag, f"{run_dir} holds no finished run")
    with open(path) as f:
        config = json.load(f)
    model_cfg, train_cfg = ModelConfig(**config["model"]), TrainConfig(**config["train"])
    if model_cfg.arch != arch:
        raise UsageError(flag, f"{run_dir} is a {model_cfg.arch} run, not {arch}")
    spec = get_architecture(arch)
    tx, _ = spec.optimizer(train_cfg, train_cfg.steps(model_cfg.seq_len))
    abstract, _ = abstract_state(spec.model(model_cfg), tx, model_cfg, train_cfg.seed, mesh)
    mngr = checkpoints.manager(run_dir, train_cfg.keep_checkpoints, train_cfg.checkpoint_every)
    state = checkpoints.restore_latest(mngr, abstract)
    mngr.close()
    return model_cfg, train_cfg, state.params


def _layer(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def switch_layers(blocks, cfg: ModelConfig) -> list[dict]:
    """The per-block parameter dicts of a Switch stack, in layer order (see scaling/models/switch.py)."""
    repeats, tail = divmod(cfg.n_layers, cfg.moe_every)
    names = [f"dense_{j}" for j in range(cfg.moe_every - 1)] + ["switch"]
    group = (lambda g: _layer(blocks["groups"], g)) if cfg.scan_layers else (lambda g: blocks[f"group_{g}"])
    return [group(g)[name] for g in range(repeats) for name in names] + [
        blocks["tail"][f"dense_{j}"] for j in range(tail)
    ]


def student_params(student, teacher, cfg: ModelConfig):
    """The dense student's params with every weight the teacher has outside its experts copied in."""
    blocks = student["blocks"]
    layers = [_layer(blocks["layers"]["block"], l) for l in range(cfg.n_layers)] if cfg.scan_layers else [
        blocks[f"layer_{l}"]["block"] for l in range(cfg.n_layers)
    ]
    taught = switch_layers(teacher["blocks"], cfg)
    merged = [{**own, **{k: v for k, v in layer.items() if k != "moe"}} for own, layer in zip(layers, taught)]
    if cfg.scan_layers:
        new_blocks = {"layers": {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *merged)}}
    else:
        new_blocks = {f"layer_{l}": {"block": layer} for l, layer in enumerate(merged)}
    return {**student, **{k: teacher[k] for k in ("embed", "head", "final_norm")}, "blocks": new_blocks}


def make_distill_step(student, teacher, tx):
    """(state, teacher_params, batch) -> (state, metrics) minimising 0.75 CE(labels) + 0.25 CE(teacher)."""

    def loss_fn(params, teacher_params, batch):
        logits = student.apply({"params": params}, batch["inputs"], train=True)
        soft_targets = jax.nn.softmax(teacher.apply({"params": teacher_params}, batch["inputs"]))
        total, count = token_cross_entropy(logits, batch["targets"], batch["weights"])
        count = jnp.maximum(count, 1.0)
        hard = total / count
        soft = jnp.sum(optax.softmax_cross_entropy(logits, soft_targets) * batch["weights"]) / count
        return (1 - SOFT_WEIGHT) * hard + SOFT_WEIGHT * soft, {"loss": hard, "soft_loss": soft}

    def step(state, teacher_params, batch):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, teacher_params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def distill(
    teacher_dir: str, baseline_dir: str, workdir: str, mesh_cfg: MeshConfig, log_every: int = 10,
    stop_step: int | None = None,
) -> dict | None:
    """Trains the dense student (see the module docstring) and returns the summary it writes; with
    `stop_step`, stops after that step with a checkpoint (as an interruption would) and returns None."""
    summary_path = os.path.join(workdir, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            return json.load(f)
    mesh = sharding.make_mesh(mesh_cfg)
    teacher_cfg, train_cfg, teacher = load_run(teacher_dir, mesh, "switch")
    student_cfg = dataclasses.replace(teacher_cfg, arch="gpt")
    baseline_cfg, _, baseline = load_run(baseline_dir, mesh, "gpt")
    if baseline_cfg != student_cfg:
        raise UsageError("--baseline", f"{baseline_dir} is not a gpt of the teacher's shape; train one with its flags")
    gpt, switch = get_architecture("gpt"), get_architecture("switch")
    steps = train_cfg.steps(student_cfg.seq_len)
    tx, schedule = gpt.optimizer(train_cfg, steps)
    student_model, teacher_model = gpt.model(student_cfg), switch.model(teacher_cfg)
    abstract, shardings = abstract_state(student_model, tx, student_cfg, train_cfg.seed, mesh)
    os.makedirs(workdir, exist_ok=True)
    mngr = checkpoints.manager(workdir, train_cfg.keep_checkpoints, train_cfg.checkpoint_every)
    state = checkpoints.restore_latest(mngr, abstract)
    if state is None:
        state = create_state(student_model, tx, student_cfg, train_cfg.seed, mesh)
        # Copies: the student's state is donated to each step, the teacher's arrays are not.
        params = jax.tree.map(jnp.copy, student_params(state.params, teacher, student_cfg))
        state = state.replace(params=jax.device_put(params, shardings.params))
    teacher_shardings = jax.tree.map(lambda x: x.sharding, teacher)
    step_fn = jax.jit(
        make_distill_step(student_model, teacher_model, tx),
        in_shardings=(shardings, teacher_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    loader = data.BatchLoader(
        data.make_source(train_cfg.data, "train", student_cfg.seq_len), global_batch_size=train_cfg.batch_size,
        seed=train_cfg.seed, sharding=sharding.batch_sharding(mesh),
    )
    log, start = MetricsLog(os.path.join(workdir, "metrics.jsonl")), time.perf_counter()
    first, stop = int(state.step), min(steps, stop_step or steps)
    log.truncate_after(first)
    with sharding.activate(mesh):
        for i in range(first, stop):
            state, metrics = step_fn(state, teacher, loader(i))
            if (i + 1) % log_every == 0 or i + 1 == steps:
                record = {k: float(v) for k, v in jax.device_get(metrics).items()}
                log.write({"step": i + 1, "lr": float(schedule(i)), "wall_s": time.perf_counter() - start, **record})
            checkpoints.save(mngr, i + 1, state, force=i + 1 == stop)
    mngr.wait_until_finished()
    mngr.close()
    if stop < steps:
        return None
    losses = {
        name: Evaluator(model, cfg, train_cfg, mesh, jax.tree.map(lambda x: x.sharding, params))(params)
        for name, model, cfg, params in (
            ("student", student_model, student_cfg, state.params),
            ("teacher", teacher_model, teacher_cfg, teacher),
            ("baseline", student_model, student_cfg, baseline),
        )
    }
    gain = losses["baseline"] - losses["teacher"]
    summary = {
        **{f"{name}_eval_loss": loss for name, loss in losses.items()},
        "kept": (losses["baseline"] - losses["student"]) / gain if gain else float("nan"),
        "steps": steps,
        "soft_weight": SOFT_WEIGHT,
        "teacher": os.path.abspath(teacher_dir),
        "baseline": os.path.abspath(baseline_dir),
        "wall_s": time.perf_counter() - start,
    }
    if jax.process_index() == 0:
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def main(argv) -> None:
    del argv
    FLAGS = flags.FLAGS
    summary = distill(FLAGS.teacher, FLAGS.baseline, FLAGS.workdir, cli.mesh_config(), FLAGS.log_every)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    flags.DEFINE_string("teacher", None, "Run directory of a finished `switch` run (experiments.train).", required=True)
    flags.DEFINE_string("baseline", None, "Run directory of a finished `gpt` of the same shape and budget.", required=True)
    flags.DEFINE_string("workdir", None, "Output directory of the student.", required=True)
    flags.DEFINE_string("mesh", "data=-1,model=1,expert=1", "Device mesh sizes; one entry may be -1 to fill.")
    flags.DEFINE_integer("log_every", 10, "Steps between metrics records.")
    cli.run(main)
