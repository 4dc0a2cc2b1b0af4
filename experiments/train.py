"""Train one model: python -m experiments.train --arch gpt --size 1e6 --tokens 2e7 --workdir runs/one.

Re-running the same command resumes from the latest checkpoint; a finished run is not trained again.
"""
import json
import os

import jax
from absl import flags

from experiments import cli
from scaling.train.loop import train

cli.define_model_flags()
cli.define_train_flags()
cli.define_common_flags()
FLAGS = flags.FLAGS


def main(argv) -> None:
    del argv
    model_cfg = cli.model_config()
    train_cfg = cli.train_config()
    workdir = FLAGS.workdir or os.path.join("runs", f"train-{model_cfg.arch}-d{model_cfg.d_model}-l{model_cfg.n_layers}")
    summary = train(model_cfg, train_cfg, cli.mesh_config(), workdir, device_memory_gib=cli.device_memory_gib())
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    cli.run(main)
