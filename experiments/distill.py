"""Distil a sparse run into a dense one: python -m experiments.distill --teacher DIR --baseline DIR --workdir DIR.

Switch Transformer sec. 4 (Table 6): a dense model of the teacher's base size (its architecture's
`distillation` entry in the registry says which, and which teacher weights it starts from: for
`switch`, a `gpt` with every non-expert weight copied) is trained on the teacher's data and token
budget with loss 0.75 x cross-entropy on the labels + 0.25 x cross-entropy on the teacher's soft
targets (its eval-mode probabilities). The teacher and the dense baseline are finished runs of
experiments.train (the baseline of the student's shape and budget). Training is the ordinary
`train()` with this loss, so the student's run directory (--workdir) has config.json, metrics.jsonl,
checkpoints and summary.json like any run, and re-running resumes it. Then the student, teacher and
baseline are evaluated on the same held-out batches and <workdir>/distillation.json records their
losses and `kept` = (L_baseline - L_student) / (L_baseline - L_teacher), the fraction of the sparse
model's gain the dense student keeps (the paper: ~30%).
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import optax
from absl import flags
from etils import epath

from experiments import cli
from scaling import sharding
from scaling.config import MeshConfig, ModelConfig, TrainConfig, UsageError
from scaling.models.registry import model_config_from_dict
from scaling.train import checkpoints
from scaling.train.evaluation import Evaluator
from scaling.train.loop import train
from scaling.train.run import Run
from scaling.train.run_dir import absolute, read_config, write_json
from scaling.train.steps import apply_for_training, token_cross_entropy

SOFT_WEIGHT = 0.25  # teacher soft targets; 1 - SOFT_WEIGHT on the labels (Switch Table 6)


class DistillationLoss:
    """(1 - SOFT_WEIGHT) CE(labels) + SOFT_WEIGHT CE(teacher probabilities) (+ the student's aux losses).

    Reports the label cross-entropy as `loss` (comparable with any run) and the soft one as `soft_loss`.
    The teacher's parameters are `frozen`: passed to every step, never trained.
    """

    def __init__(self, teacher_model, teacher_params):
        self.teacher = teacher_model
        self.frozen = teacher_params

    def __call__(self, model, params, frozen, batch, rng):
        logits, aux, metrics = apply_for_training(model, params, batch["inputs"], rng)
        soft_targets = jax.nn.softmax(self.teacher.apply({"params": frozen}, batch["inputs"]))
        total, count = token_cross_entropy(logits, batch["targets"], batch["weights"])
        count = jnp.maximum(count, 1.0)
        hard = total / count
        soft = jnp.sum(optax.softmax_cross_entropy(logits, soft_targets) * batch["weights"]) / count
        loss = (1 - SOFT_WEIGHT) * hard + SOFT_WEIGHT * soft + sum(aux.values())
        return loss, {"loss": hard, "soft_loss": soft, **aux, **metrics}


def load_run(run_dir: str, mesh, flag: str) -> Run:
    """The Run of a finished run directory, with its final parameters as `run.params`."""
    config = read_config(run_dir)
    if config is None or not (epath.Path(run_dir) / "summary.json").exists():
        raise UsageError(flag, f"{run_dir} holds no finished run")
    train_cfg = TrainConfig(**config["train"])
    run = Run(model_config_from_dict(config["model"]), train_cfg, mesh)
    mngr = checkpoints.manager(run_dir, train_cfg.keep_checkpoints, train_cfg.checkpoint_every)
    run.params = run.restore(mngr).params
    mngr.close()
    return run


def left_to_fit(model_cfg: ModelConfig) -> ModelConfig:
    """`model_cfg` with the settings its run fitted to its devices (remat, unrolled layers) left to fit
    again: the student is fitted to its own memory, and compared with the baseline by its shape."""
    return model_cfg.replace(remat="auto", unroll_layers=None)


def distill(teacher_dir: str, baseline_dir: str, workdir: str, mesh_cfg: MeshConfig, log_every: int = 10,
            max_steps: int | None = None, device_memory_gib: float | None = None) -> dict | None:
    """Trains the dense student (see the module docstring) and returns its summary merged with
    distillation.json; with `max_steps`, stops there with a checkpoint and returns None. Its remat and
    microbatches are fitted to `device_memory_gib` (default: what the device reports)."""
    mesh = sharding.make_mesh(mesh_cfg)
    teacher = load_run(teacher_dir, mesh, "--teacher")
    distillation = teacher.arch.distillation
    if distillation is None:
        raise UsageError("--teacher", f"{teacher_dir} is a {teacher.arch.name} run, which has no dense student; "
                                      "give a run of an architecture with experts")
    student_cfg = left_to_fit(distillation.student_config(teacher.model_cfg))
    baseline = load_run(baseline_dir, mesh, "--baseline")
    if left_to_fit(baseline.model_cfg) != student_cfg:
        raise UsageError("--baseline", f"{baseline_dir} is not a {student_cfg.arch} of the teacher's shape; "
                                       "train one with its flags")
    train_cfg = dataclasses.replace(teacher.train_cfg, log_every=log_every, microbatches=0)
    summary = train(
        student_cfg, train_cfg, mesh_cfg, workdir, max_steps=max_steps,
        loss=DistillationLoss(teacher.model, teacher.params),
        init_from=lambda fresh: distillation.student_params(teacher.model_cfg, teacher.params, student_cfg, fresh),
        extra_config={"distillation": {"teacher": absolute(teacher_dir), "soft_weight": SOFT_WEIGHT}},
        device_memory_gib=device_memory_gib,
    )
    if not summary["complete"]:
        return None
    return {**summary, **_report(teacher, baseline, summary["final_eval_loss"], workdir, baseline_dir)}


def _report(teacher: Run, baseline: Run, student_loss: float, workdir: str, baseline_dir: str) -> dict:
    """distillation.json: the three eval losses on the same held-out batches and the kept fraction."""
    path = epath.Path(workdir) / "distillation.json"
    if path.exists():
        return json.loads(path.read_text())
    # The teacher's data and eval batches for all three.
    same_batches = Run(baseline.model_cfg, teacher.train_cfg, baseline.mesh)
    losses = {"student": student_loss, "teacher": Evaluator(teacher)(teacher.params)["eval_loss"],
              "baseline": Evaluator(same_batches)(baseline.params)["eval_loss"]}
    gain = losses["baseline"] - losses["teacher"]
    report = {
        **{f"{name}_eval_loss": loss for name, loss in losses.items()},
        "kept": (losses["baseline"] - losses["student"]) / gain if gain else None,
        "soft_weight": SOFT_WEIGHT,
        "baseline": absolute(baseline_dir),
    }
    write_json(path, report)
    return report


def main(argv) -> None:
    del argv
    FLAGS = flags.FLAGS
    cli.keep_compiled(FLAGS.workdir)
    summary = distill(FLAGS.teacher, FLAGS.baseline, FLAGS.workdir, cli.mesh_config(), FLAGS.log_every,
                      device_memory_gib=cli.device_memory_gib())
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    flags.DEFINE_string("teacher", None, "Run directory of a finished sparse run (experiments.train).", required=True)
    flags.DEFINE_string("baseline", None, "Run directory of a finished dense run of the student's shape and budget.",
                        required=True)
    cli.define_common_flags()
    cli.define_train_flags(("log_every",))
    flags.mark_flag_as_required("workdir")
    cli.run(main)
