"""Train one model: python -m experiments.train --arch gpt --size 1e6 --tokens 2e7 --workdir runs/one.

Re-running the same command resumes from the latest checkpoint; a finished run is not trained again.
Exit status: 0 complete, 2 bad input, 3 diverged (one line names the step and the last finite
checkpoint), 143 stopped by SIGTERM after saving a checkpoint (re-run to resume).
"""
import json
import os
import sys

import jax
from absl import flags

from experiments import cli
from scaling.train.loop import train

cli.define_model_flags()
cli.define_train_flags()
cli.define_common_flags()
FLAGS = flags.FLAGS
DIVERGED = 3


def main(argv) -> None:
    del argv
    model_cfg = cli.model_config()
    train_cfg = cli.train_config()
    workdir = FLAGS.workdir or os.path.join("runs", f"train-{model_cfg.arch}-d{model_cfg.d_model}-l{model_cfg.n_layers}")
    cli.keep_compiled(workdir)
    summary = train(model_cfg, train_cfg, cli.mesh_config(), workdir, device_memory_gib=cli.device_memory_gib())
    if summary["status"] == "diverged":
        diverged = summary["diverged"]
        print(f"run {os.path.basename(os.path.normpath(workdir))} diverged at step {diverged['step']}: "
              f"{diverged['what']}; last finite checkpoint: step {diverged['last_checkpoint']}", file=sys.stderr)
        sys.exit(DIVERGED)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    cli.run(main)
