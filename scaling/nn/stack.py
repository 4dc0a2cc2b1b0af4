"""A stack of identical residual blocks, scanned over a 'layers' axis or unrolled, with remat."""
import flax.linen as nn
import jax

from scaling.config import ModelConfig

REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class _ScanStep(nn.Module):
    """Adapts a block `x -> x` to the (carry, xs) -> (carry, ys) signature nn.scan expects."""

    block: type[nn.Module]
    config: ModelConfig
    train: bool

    @nn.compact
    def __call__(self, x, positions):
        return self.block(self.config, name="block")(x, positions, self.train), None


class BlockStack(nn.Module):
    """Applies `config.n_layers` blocks `block(config)(x, positions, train) -> x` in sequence.

    With `scan_layers`, parameters gain a leading 'layers' axis and the stack compiles once
    (nn.scan); sown auxiliary losses and metrics are stacked over layers the same way.
    `remat` recomputes each block's activations in the backward pass ('full') or keeps its
    matmul outputs ('dots').
    """

    block: type[nn.Module]
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, train: bool) -> jax.Array:
        cfg = self.config
        step = _ScanStep
        if cfg.remat != "none":
            step = nn.remat(step, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        if not cfg.scan_layers:
            for layer in range(cfg.n_layers):
                x, _ = step(self.block, cfg, train, name=f"layer_{layer}")(x, positions)
            return x
        scanned = nn.scan(
            step,
            variable_axes={"params": 0, "aux_loss": 0, "metrics": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=nn.broadcast,
            length=cfg.n_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = scanned(self.block, cfg, train, name="layers")(x, positions)
        return x
