"""Running a plan in its workdir: the learning-rate search, then every run (finished ones skipped,
interrupted ones resumed), each result appended to results.jsonl, then the fits (fits.json,
isoflop.png). Process 0 writes the sweep's shared files; a workdir holding another plan is refused.
"""
import io
import json

import jax
from etils import epath

from scaling import analysis, sharding
from scaling import lr_search as lr_search_lib
from scaling.config import MeshConfig, TrainConfig, UsageError
from scaling.flops import CONVENTION
from scaling.models.registry import model_config_from_dict
from scaling.sweep.plan import all_runs
from scaling.train.loop import train
from scaling.train.metrics import append_lines, format_duration, strict_json
from scaling.train.run import Run
from scaling.train.run_dir import LAYOUT, default_cache_dir, write_file


def _unfitted(plan: dict) -> dict:
    """The plan without what is filled in while it runs: the settings fitted to the devices (which may
    change when a sweep resumes elsewhere) and the learning-rate search's results."""
    plan = json.loads(json.dumps(plan))
    for run in all_runs(plan):
        run["model"].pop("remat")
        run["train"].pop("microbatches")
        run.pop("mesh", None)
        run.pop("gib_per_device", None)
    if "lr_search" in plan:
        for run in plan["runs"]:
            run["train"].pop("learning_rate")
        plan["lr_search"]["applied"] = None
        for entry in plan["lr_search"]["calibration"].values():
            entry.update(losses=None, chosen_lr=None)
    return plan


def check_workdir(workdir: str, plan: dict) -> None:
    """Refuses a `workdir` that already holds a sweep with a different plan (never mix or overwrite
    results); the settings fitted to the devices may differ."""
    path = epath.Path(workdir) / "plan.json"
    if path.exists():
        existing = json.loads(path.read_text())
        if existing.get("layout") != LAYOUT:
            raise UsageError("--workdir", f"{workdir} holds a sweep written by an earlier version of this toolkit "
                                          "(another parameter layout); choose a new --workdir")
        if _unfitted(existing) != _unfitted(plan):
            raise UsageError("--workdir", f"{workdir} holds a sweep with a different plan; re-run its original "
                                          "command to resume it, or choose a new --workdir")


def check_data(plan: dict, mesh_cfg: MeshConfig, workdir: str) -> None:
    """UsageError unless the data serves the sweep's runs (`Run.check_data`), checked on the first of them
    before the sweep writes anything: they share its data settings, sequence length and vocabulary. The
    splits are packed into the sweep's data cache, where its runs read them."""
    first = all_runs(plan)[0]
    Run(model_config_from_dict(first["model"]), TrainConfig(**first["train"]), sharding.make_mesh(mesh_cfg),
        cache_dir=default_cache_dir(workdir)).check_data()


def write_plan(workdir: str, plan: dict) -> None:
    """Writes plan.json, the plan as this invocation runs it (`check_workdir` has vouched for an existing one)."""
    write_file(epath.Path(workdir) / "plan.json", json.dumps(plan, indent=2))


def result_record(run: dict, summary: dict) -> dict:
    """One results.jsonl line (the CONTRACT in DESIGN.md); a diverged run has null losses."""
    return {
        "run_id": run["run_id"],
        "arch": run["arch"],
        "budget": run["budget"],
        "params": run["params"],
        "nonembed_params": run["nonembed_params"],
        "active_params": run["active_params"],
        "flops_per_token": run["flops_per_token"],
        "tokens": summary["tokens"],
        "steps": summary["steps"],
        "epochs": summary.get("epochs"),  # absent from summaries written before it was recorded
        "seq_len": run["model"]["seq_len"],
        "batch_size": run["train"]["batch_size"],
        "remat": run["model"]["remat"],
        "microbatches": run["train"]["microbatches"],
        "seed": run["train"]["seed"],
        "learning_rate": run["train"]["learning_rate"],
        "final_train_loss": summary["final_train_loss"],
        "final_eval_loss": summary["final_eval_loss"],
        "final_eval_causal_loss": summary["final_eval_causal_loss"],
        "final_eval_bpb": summary["final_eval_bpb"],
        "status": summary["status"],
        "wall_s": summary["wall_s"],
        "flops_convention": CONVENTION,
        "data_fingerprint": summary["data_fingerprint"],
    }


def append_result(workdir: str, record: dict) -> None:
    """Appends one strict-JSON line (an interrupted sweep never leaves half a line)."""
    append_lines(epath.Path(workdir) / "results.jsonl", [strict_json(record)])


def finished_results(workdir: str) -> list[dict]:
    """The results.jsonl records written so far (none before the first run finishes)."""
    return analysis.load_results(workdir) if (epath.Path(workdir) / "results.jsonl").exists() else []


def finish(workdir: str, x_key: str = "params", metric: str = "final_eval_loss") -> dict:
    """Fits a parabola of `metric` in log `x_key` per architecture and budget (seeds averaged, diverged
    runs left out), with bootstrap intervals and, over several budgets, the N_opt and D_opt power laws;
    writes fits.json and isoflop.png, returns the fits."""
    results = finished_results(workdir)
    fits = analysis.fit_sweep(results, x_key, metric=metric)
    if jax.process_index() == 0:
        write_file(epath.Path(workdir) / "fits.json", json.dumps(fits, indent=2))
        image = io.BytesIO()
        analysis.plot_isoflop(results, fits, image, x_key, metric=metric)
        write_file(epath.Path(workdir) / "isoflop.png", image.getvalue())
        print(analysis.format_table(results, fits, metric=metric))
    return fits


def apply_lr_search(plan: dict, workdir: str, mesh_cfg: MeshConfig, log, device_memory_gib) -> None:
    """Trains (or resumes) the calibration runs, records their losses and each architecture's chosen
    rate, and sets every sweep run's learning rate from it (scaling/lr_search.py)."""
    search = plan["lr_search"]
    for arch, entry in search["calibration"].items():
        losses = [_train_run(run, workdir, mesh_cfg, log, device_memory_gib)["final_eval_loss"]
                  for run in entry["runs"]]
        entry.update(losses=losses, chosen_lr=lr_search_lib.choose(entry, losses))
        log(f"lr search {arch}: " + ", ".join(f"{run['train']['learning_rate']:.3g} -> {loss}"
                                                for run, loss in zip(entry["runs"], losses))
            + f"; chosen {entry['chosen_lr']:.3g}")
    for run in plan["runs"]:
        entry = search["calibration"][run["arch"]]
        run["train"]["learning_rate"] = lr_search_lib.transferred(
            entry["chosen_lr"], entry["kaplan_lr"], run["active_params"] - (run["params"] - run["nonembed_params"]))
    search["applied"] = True
    write_plan(workdir, plan)


def _train_run(run: dict, workdir: str, mesh_cfg: MeshConfig, log, device_memory_gib) -> dict:
    """Trains (or resumes, or reads the summary of) one planned run on its fitted mesh."""
    run_mesh = MeshConfig(**run["mesh"]) if "mesh" in run else mesh_cfg
    summary = train(model_config_from_dict(run["model"]), TrainConfig(**run["train"]), run_mesh,
                    str(epath.Path(workdir) / "runs" / run["run_id"]), device_memory_gib=device_memory_gib,
                    cache_dir=default_cache_dir(workdir))
    if summary["status"] == "diverged":
        log(f"    {run['run_id']} diverged at step {summary['diverged']['step']}: {summary['diverged']['what']}")
    return summary


def run_sweep(plan: dict, workdir: str, mesh_cfg: MeshConfig, log=print, x_key: str = "params",
              device_memory_gib: float | None = None, metric: str = "final_eval_loss") -> dict:
    """Runs the learning-rate search if planned, then every planned run (finished ones are skipped,
    partial ones resume) on its fitted mesh, then fits and plots `metric` against `x_key` (params,
    nonembed_params or active_params); diverged runs are recorded and left out of the fits."""
    if "lr_search" in plan and not plan["lr_search"]["applied"]:
        apply_lr_search(plan, workdir, mesh_cfg, log, device_memory_gib)
    done = {r["run_id"] for r in finished_results(workdir)}
    for i, run in enumerate(plan["runs"]):
        if run["run_id"] in done:
            log(f"[{i + 1}/{len(plan['runs'])}] {run['run_id']}: finished earlier, skipped")
            continue
        log(f"[{i + 1}/{len(plan['runs'])}] {run['run_id']}: {run['tokens']:.3g} tokens, {run['steps']} steps")
        summary = _train_run(run, workdir, mesh_cfg, log, device_memory_gib)
        if jax.process_index() == 0:
            append_result(workdir, result_record(run, summary))
        if summary["status"] == "complete":
            log(f"    final eval loss {summary['final_eval_loss']:.4f} in {format_duration(summary['wall_s'])}")
    return finish(workdir, x_key, metric)
