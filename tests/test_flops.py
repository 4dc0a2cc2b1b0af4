"""The analytic FLOP count agrees with XLA's cost analysis of the compiled train step."""
import jax
import pytest

from scaling import sharding
from scaling.config import MeshConfig, ModelConfig, TrainConfig
from scaling.models.registry import get_architecture
from scaling.train.run import Run


def compiled_step_flops(cfg: ModelConfig, batch_size: int) -> float:
    """FLOPs XLA counts for one train step on one device."""
    mesh = sharding.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    run = Run(cfg, TrainConfig(batch_size=batch_size, tokens=batch_size * cfg.seq_len), mesh, total_steps=100)
    analysis = run.compiled_train_step.cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


@pytest.mark.parametrize(
    "shape",
    [
        dict(d_model=256, n_layers=2, n_heads=4, d_ff=704, seq_len=128, vocab_size=256),
        dict(d_model=384, n_layers=3, n_heads=6, d_ff=1024, seq_len=256, vocab_size=512),
        dict(d_model=512, n_layers=2, n_heads=8, d_ff=1408, seq_len=512, vocab_size=1024),
    ],
)
def test_analytic_flops_match_compiled_cost_analysis(shape):
    # Unrolled layers: XLA's cost analysis counts a scanned (while-loop) body only once.
    cfg = ModelConfig(**shape, scan_layers=False)
    batch = 4
    analytic = get_architecture("gpt").counts(cfg).flops_per_token * batch * cfg.seq_len
    compiled = compiled_step_flops(cfg, batch)
    assert compiled == pytest.approx(analytic, rel=0.10), f"analytic {analytic:.4g} vs XLA {compiled:.4g}"
