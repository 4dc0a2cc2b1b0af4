"""isoFLOP planning (sizes, tokens, refusals) and execution (results, fits, plot, resumption)."""
import json
import math
import os
import pathlib

import pytest

from scaling import sweep
from scaling.config import MeshConfig, ModelConfig, TrainConfig, UsageError
from scaling.lr_search import kaplan_learning_rate
from scaling.models.registry import get_architecture, model_config, model_config_from_dict

RESULT_KEYS = {"run_id", "arch", "budget", "params", "nonembed_params", "active_params", "flops_per_token", "tokens",
               "steps", "epochs", "seq_len", "batch_size", "remat", "microbatches", "final_train_loss",
               "final_eval_loss", "seed", "learning_rate", "final_eval_causal_loss", "final_eval_bpb", "status",
               "wall_s", "flops_convention", "data_fingerprint"}


def test_plan_at_6e18_is_chinchilla_like():
    plan = sweep.plan_sweep(6e18, [ModelConfig(seq_len=1024)], 7, TrainConfig())
    runs = plan["runs"]
    params = [r["nonembed_params"] for r in runs]
    assert len(runs) == 7 and params == sorted(params)
    middle = runs[3]
    assert 1e8 < middle["nonembed_params"] < 4e8
    assert 2e9 < middle["tokens"] < 8e9
    assert 0.7 < middle["tokens"] / (20 * middle["nonembed_params"]) < 1.5
    ratios = [b / a for a, b in zip(params, params[1:])]
    assert max(ratios) / min(ratios) < 1.6  # evenly spaced in log N, up to the family's rounding
    for run in runs:
        assert run["tokens"] * run["flops_per_token"] == pytest.approx(6e18, rel=1e-6)
        assert run["train"]["batch_size"] == 512 and run["steps"] > 1000
    assert plan == sweep.plan_sweep(6e18, [ModelConfig(seq_len=1024)], 7, TrainConfig())


def test_optimal_size_solves_the_budget_equation():
    base = ModelConfig(seq_len=1024)
    n = sweep.optimal_size(1e20, base)
    from scaling.shapes import shape_for_params

    cost = get_architecture("gpt").counts(shape_for_params(n, base)).flops_per_token * 20 * n
    assert cost == pytest.approx(1e20, rel=0.2)


@pytest.mark.parametrize("budget", [0.0, -1.0, math.nan, math.inf])
def test_budget_must_be_positive_and_finite(budget):
    with pytest.raises(UsageError, match="--budget"):
        sweep.plan_sweep(budget, [ModelConfig()], 5, TrainConfig())


def test_too_small_budget_names_the_minimum():
    with pytest.raises(UsageError, match=r"--budget: .*use at least (\S+)") as error:
        sweep.plan_sweep(1e9, [ModelConfig(seq_len=128)], 5, TrainConfig())
    minimum = float(str(error.value).rsplit(" ", 1)[-1])
    assert len(sweep.plan_sweep(minimum, [ModelConfig(seq_len=128)], 5, TrainConfig())["runs"]) >= 3


def test_switch_plans_only_shapes_with_an_expert_block_at_the_lr_of_its_active_size():
    base = model_config("switch", seq_len=128, moe_every=2)
    with pytest.raises(UsageError, match=r"use at least (\S+) or a smaller --moe_every") as error:
        sweep.plan_sweep(3e12, [base], 5, TrainConfig())
    minimum = float(str(error.value).split("use at least ")[1].split()[0])
    runs = sweep.plan_sweep(minimum, [base], 5, TrainConfig())["runs"]
    assert len(runs) >= 3
    for run in runs:
        shape = model_config_from_dict(run["model"])
        assert shape.n_layers >= 2
        dense = kaplan_learning_rate(get_architecture("gpt").counts(shape).nonembed_params)
        assert run["train"]["learning_rate"] == pytest.approx(dense, rel=0.01)  # not the total size's lower LR


def json_lines(*path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(*path).read_text().splitlines()]


def small_plan(tmp_budget=2e12):
    """A real plan whose runs are cut to a few steps each, to exercise execution quickly."""
    plan = sweep.plan_sweep(tmp_budget, [ModelConfig(seq_len=32)], 3, TrainConfig(data="synthetic"), batch_size=8)
    for run in plan["runs"]:
        run["train"].update(tokens=6 * 8 * 32, eval_every=3, eval_batches=1, log_every=3)
        run["tokens"], run["steps"] = 6 * 8 * 32, 6
    return plan


def test_sweep_runs_fits_plots_and_resumes(tmp_path):
    workdir = str(tmp_path / "sweep")
    plan = small_plan()
    sweep.check_workdir(workdir, plan)
    sweep.write_plan(workdir, plan)
    fits = sweep.run_sweep(plan, workdir, MeshConfig(), log=lambda line: None)

    results = json_lines(workdir, "results.jsonl")
    assert [r["run_id"] for r in results] == [r["run_id"] for r in plan["runs"]]
    assert all(set(r) == RESULT_KEYS for r in results)
    assert all(r["steps"] == 6 and math.isfinite(r["final_eval_loss"]) for r in results)
    assert all(r["final_eval_causal_loss"] == r["final_eval_loss"] for r in results)  # gpt's eval pass is causal
    assert set(fits["gpt"]) == {repr(2e12)} and fits["gpt"][repr(2e12)]["points"] == len(results)
    assert json.loads(pathlib.Path(workdir, "fits.json").read_text()) == json.loads(json.dumps(fits))
    assert os.path.getsize(os.path.join(workdir, "isoflop.png")) > 10_000

    logged = []
    refit = sweep.run_sweep(plan, workdir, MeshConfig(), log=logged.append, x_key="nonembed_params")
    assert all("skipped" in line for line in logged)
    assert len(json_lines(workdir, "results.jsonl")) == len(results)
    assert refit["gpt"][repr(2e12)]["x_key"] == "nonembed_params"
    assert refit["gpt"][repr(2e12)]["x_range"][0] == min(r["nonembed_params"] for r in results)
    causal = sweep.run_sweep(plan, workdir, MeshConfig(), log=logged.append, metric="final_eval_causal_loss")
    assert causal["gpt"][repr(2e12)]["loss_min"] == pytest.approx(fits["gpt"][repr(2e12)]["loss_min"])


def test_partial_sweep_resumes_the_interrupted_run(tmp_path):
    workdir = str(tmp_path / "sweep")
    plan = small_plan()
    plan["runs"] = plan["runs"][:1]
    sweep.write_plan(workdir, plan)
    from scaling.train.loop import train

    first = plan["runs"][0]
    run_dir = os.path.join(workdir, "runs", first["run_id"])
    train(model_config_from_dict(first["model"]), TrainConfig(**first["train"]), MeshConfig(), run_dir, max_steps=3)
    sweep.run_sweep(plan, workdir, MeshConfig(), log=lambda line: None)
    steps = [m["step"] for m in json_lines(run_dir, "metrics.jsonl")]
    assert steps == [3, 6]


def test_workdir_with_a_different_plan_is_refused(tmp_path):
    workdir = str(tmp_path / "sweep")
    plan = small_plan()
    sweep.write_plan(workdir, plan)
    different = small_plan(3e12)
    with pytest.raises(UsageError, match="--workdir"):
        sweep.check_workdir(workdir, different)
    sweep.check_workdir(workdir, small_plan())
    assert json.loads(pathlib.Path(workdir, "plan.json").read_text()) == json.loads(json.dumps(plan))


def test_several_budgets_and_seeds_make_distinct_runs():
    plan = sweep.plan_sweep([6e12, 2e12], [ModelConfig(seq_len=128)], 3, TrainConfig(seed=5), seeds=2)
    ids = [r["run_id"] for r in plan["runs"]]
    assert plan["budgets"] == [2e12, 6e12] and plan["seeds"] == [5, 6] and "budget" not in plan
    assert len(set(ids)) == len(ids) and {r["budget"] for r in plan["runs"]} == {2e12, 6e12}
    assert {r["train"]["seed"] for r in plan["runs"]} == {5, 6} and all(i.endswith(("-s5", "-s6")) for i in ids)
    single = sweep.plan_sweep(2e12, [ModelConfig(seq_len=128)], 3, TrainConfig())
    assert single["budget"] == 2e12 and not any("-C" in r["run_id"] or "-s" in r["run_id"] for r in single["runs"])


@pytest.mark.parametrize("kwargs, flag", [(dict(budgets=[2e12, 2e12]), "--budgets"), (dict(seeds=0), "--seeds"),
                                          (dict(lr_search=2), "--lr_search")])
def test_bad_budgets_seeds_and_lr_grids_are_usage_errors(kwargs, flag):
    budgets = kwargs.pop("budgets", 2e12)
    with pytest.raises(UsageError) as error:
        sweep.plan_sweep(budgets, [ModelConfig(seq_len=128)], 3, TrainConfig(), **kwargs)
    assert error.value.flag == flag


def test_lr_search_tunes_each_architecture_then_carries_its_best_by_the_kaplan_ratio(tmp_path):
    plan = sweep.plan_sweep(2e12, [ModelConfig(seq_len=32)], 3, TrainConfig(data="synthetic"), batch_size=8,
                            lr_search=3)
    for run in sweep.all_runs(plan):
        run["train"].update(tokens=4 * 8 * 32, eval_every=2, eval_batches=1, log_every=2)
        run["tokens"], run["steps"] = 4 * 8 * 32, 4
    search = plan["lr_search"]["calibration"]["gpt"]
    rates = [run["train"]["learning_rate"] for run in search["runs"]]
    assert len(rates) == 3 and rates == sorted(rates) and rates[-1] / rates[0] == pytest.approx(100)
    workdir = str(tmp_path / "sweep")
    sweep.check_workdir(workdir, plan)
    sweep.write_plan(workdir, plan)
    sweep.run_sweep(plan, workdir, MeshConfig(), log=lambda line: None)
    written = json.loads(pathlib.Path(workdir, "plan.json").read_text())
    entry = written["lr_search"]["calibration"]["gpt"]
    assert written["lr_search"]["applied"] and len(entry["losses"]) == 3
    best = min(zip(entry["losses"], rates))[1]
    assert entry["chosen_lr"] == best
    for run in written["runs"]:
        active = run["active_params"] - (run["params"] - run["nonembed_params"])
        expected = best * kaplan_learning_rate(active) / entry["kaplan_lr"]
        assert run["train"]["learning_rate"] == pytest.approx(expected)
    results = json_lines(workdir, "results.jsonl")
    assert [r["learning_rate"] for r in results] == [r["train"]["learning_rate"] for r in written["runs"]]
    sweep.check_workdir(workdir, plan)  # the unsearched plan still resumes the searched sweep
