"""isoFLOP sweeps (Chinchilla approach 2, REFERENCE.md section 6): `plan` chooses the runs, `devices` fits
them to the devices and estimates their wall time, `run` trains them in a workdir and fits the results
(scaling/analysis/)."""
from scaling.sweep.devices import check_mesh, estimate_on_target, estimate_seconds, fit_plan, format_plan
from scaling.sweep.plan import all_runs, optimal_size, plan_sweep
from scaling.sweep.run import (append_result, check_data, check_workdir, finish, result_record, run_sweep,
                               write_plan)

__all__ = ["all_runs", "append_result", "check_data", "check_mesh", "check_workdir", "estimate_on_target",
           "estimate_seconds", "finish", "fit_plan", "format_plan", "optimal_size", "plan_sweep", "result_record",
           "run_sweep", "write_plan"]
