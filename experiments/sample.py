"""Continue a prompt with a trained model: python -m experiments.sample --workdir runs/one --prompt 'def '.

Restores the latest checkpoint of the run in --workdir and prints the prompt followed by the sampled
continuation, encoded and decoded by the run's tokenizer. Nothing is written.
"""
import jax
import numpy as np
from absl import flags
from etils import epath

from experiments import cli
from scaling import data, sharding
from scaling.config import MeshConfig, TrainConfig, UsageError
from scaling.models.registry import model_config_from_dict
from scaling.sample import sample
from scaling.train import checkpoints
from scaling.train.run import Run
from scaling.train.run_dir import read_config

flags.DEFINE_string("workdir", None, "Run directory (holding config.json and checkpoints/).")
flags.DEFINE_string("prompt", "def ", "Text to continue.")
flags.DEFINE_integer("num_tokens", 256, "Tokens to generate.")
flags.DEFINE_integer("num_samples", 1, "Continuations sampled as one batch.")
flags.DEFINE_float("temperature", 0.8, "Softmax temperature (0: greedy).")
flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
FLAGS = flags.FLAGS


def load_params(run_dir: str):
    """(model config, parameters, tokenizer or None) of the latest checkpoint of a run directory."""
    config = read_config(run_dir) if run_dir else None
    if config is None or not (epath.Path(run_dir) / "checkpoints").exists():
        raise UsageError("--workdir", f"{run_dir!r} holds no trained run (config.json and checkpoints/)")
    model_cfg, train_cfg = model_config_from_dict(config["model"]), TrainConfig(**config["train"])
    run = Run(model_cfg, train_cfg, sharding.make_mesh(MeshConfig(data=1), jax.devices()[:1]))
    mngr = checkpoints.manager(run_dir, train_cfg.keep_checkpoints, train_cfg.checkpoint_every)
    state = run.restore(mngr)
    mngr.close()
    if state is None:
        raise UsageError("--workdir", f"{run_dir} has no checkpoint yet; train it first")
    tokenizer = data.tokenizer(train_cfg.data, train_cfg.tokenizer, train_cfg.data_dir, train_cfg.text_key,
                               config.get("data_cache"))
    return model_cfg, state.params, tokenizer


def main(argv) -> None:
    del argv
    if FLAGS.num_tokens < 1 or FLAGS.num_samples < 1 or FLAGS.temperature < 0 or FLAGS.top_k < 0:
        raise UsageError("--num_tokens", "--num_tokens, --num_samples must be >= 1; --temperature, --top_k >= 0")
    model_cfg, params, tokenizer = load_params(FLAGS.workdir)
    if tokenizer is None:
        raise UsageError("--workdir", f"{FLAGS.workdir} was trained on token ids (synthetic data), not text")
    prompt = tokenizer.encode(FLAGS.prompt)
    if not prompt.size:
        raise UsageError("--prompt", "give at least one character to continue")
    batch = np.tile(prompt, (FLAGS.num_samples, 1))
    tokens = sample(model_cfg, params, batch, FLAGS.num_tokens, temperature=FLAGS.temperature,
                    top_k=FLAGS.top_k, seed=FLAGS.seed)
    for row in np.asarray(tokens):
        print(FLAGS.prompt + tokenizer.decode(row.tolist()))
        print("-" * 40)


if __name__ == "__main__":
    cli.run(main)
