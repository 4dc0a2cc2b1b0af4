"""The train step against a plain PyTorch eager model of the same shape, side by side on the CPU:

    python -m benchmarks.cpu_vs_torch [--d_model 256 --n_layers 4 --n_heads 4 --seq_len 256 --batch_size 8]
        [--layers looped|unrolled|separate] [--matmuls]

Both models are the baseline GPT of REFERENCE.md section 1 (RMSNorm, RoPE, causal softmax attention,
SwiGLU, untied embeddings, no biases; float32) trained by AdamW with global-norm clipping on the
same random tokens; PyTorch is eager with its stock kernels (scaled_dot_product_attention, fused
projections as in our model). Steps alternate, one of each per round, after warm-up; the median
tokens/s of each and the median over rounds of the ratio (ours over PyTorch's, taken within a round
so that the machine's drifts cancel) are printed as JSON with the CPU's model and flags. With
`--matmuls` it times the step's matmuls instead, each alone in both libraries (XLA's with the
toolkit's CPU options): every projection's forward and both gradients, and the attention's batched
products, in GFLOP/s (benchmarks/README.md, CPU: how far the step can go). Needs
`pip install torch` (not a dependency of the toolkit). `ATEN_CPU_CAPABILITY=avx2` and
`XLA_FLAGS=--xla_cpu_max_isa=AVX2` do not reproduce an AVX2-only machine on one with AVX-512: the
XLA flag restricts the code XLA generates, not the matmul libraries it calls (benchmarks/README.md, CPU).
"""
import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scaling import hardware
from scaling.benchmark import fit_for_timing, random_batch
from scaling.compiler import device_options
from scaling.config import MeshConfig
from scaling.models.registry import model_config
from scaling.shapes import d_ff_for


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate-half RoPE of x [batch, heads, length, d_head]."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float32) / half)
    angles = torch.arange(x.shape[-2], dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        self.heads, self.d_ff = heads, d_ff
        self.attn_norm, self.mlp_norm = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.qkv, self.out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.up_gate, self.down = nn.Linear(d, 2 * d_ff, bias=False), nn.Linear(d_ff, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, d))
        up, gate = self.up_gate(self.mlp_norm(x)).split(self.d_ff, dim=-1)
        return x + self.down(up * F.silu(gate))


class TorchGPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, d_ff: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, d_ff) for _ in range(layers))
        self.norm, self.head = nn.RMSNorm(d, eps=1e-6), nn.Linear(d, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class TorchStep:
    """One AdamW step (betas 0.9/0.95, wd 0.1, clip 1.0) of the PyTorch model on fixed random tokens."""

    def __init__(self, args):
        torch.manual_seed(0)
        self.model = TorchGPT(args.vocab_size, args.d_model, args.n_layers, args.n_heads, d_ff_for(args.d_model))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        self.tokens = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len + 1))

    def __call__(self) -> None:
        logits = self.model(self.tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.tokens[:, 1:].reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()


LAYERS = {"default": {}, "looped": {"unroll_layers": False}, "unrolled": {"unroll_layers": True},
          "separate": {"scan_layers": False}}


class JaxStep:
    """One step of the toolkit's compiled train step of the same shape."""

    def __init__(self, args):
        cfg = model_config("gpt", vocab_size=args.vocab_size, d_model=args.d_model, n_layers=args.n_layers,
                           n_heads=args.n_heads, d_ff=d_ff_for(args.d_model), seq_len=args.seq_len,
                           **LAYERS[args.layers])
        run = fit_for_timing(cfg, args.batch_size, MeshConfig(data=1)).run
        self.step, self.state = run.compiled_train_step, run.init_state()
        self.batch = random_batch(run.model_cfg, args.batch_size, run.mesh)

    def __call__(self) -> None:
        self.state, metrics = self.step(self.state, self.batch, None)
        jax.block_until_ready(metrics)


def step_matmuls(args) -> dict[str, tuple[str, tuple, tuple]]:
    """{name: (einsum, lhs shape, rhs shape)} of the step's distinct matmuls: each projection's forward,
    input gradient and weight gradient, and the three forms of the attention's batched products."""
    tokens, d, d_ff = args.batch_size * args.seq_len, args.d_model, d_ff_for(args.d_model)
    matmuls = {}
    projections = {"qkv": (d, 3 * d), "out": (d, d), "up_gate": (d, 2 * d_ff), "down": (d_ff, d)}
    for name, (fan_in, fan_out) in projections.items():
        matmuls[f"{name} forward"] = ("ti,io->to", (tokens, fan_in), (fan_in, fan_out))
        matmuls[f"{name} input gradient"] = ("to,io->ti", (tokens, fan_out), (fan_in, fan_out))
        matmuls[f"{name} weight gradient"] = ("ti,to->io", (tokens, fan_in), (tokens, fan_out))
    heads = (args.batch_size, args.n_heads, args.seq_len, d // args.n_heads)
    scores = (args.batch_size, args.n_heads, args.seq_len, args.seq_len)
    matmuls["attention Q K^T, dO V^T"] = ("bhqd,bhkd->bhqk", heads, heads)
    matmuls["attention P V, dS K"] = ("bhqk,bhkd->bhqd", scores, heads)
    matmuls["attention P^T dO, dS^T Q"] = ("bhqk,bhqd->bhkd", scores, heads)
    return matmuls


def einsum_flops(equation: str, lhs: tuple, rhs: tuple) -> float:
    sizes = dict(zip(equation.split("->")[0].replace(",", ""), lhs + rhs))
    return 2.0 * np.prod([sizes[axis] for axis in set(sizes)])


def median_seconds(call, rounds: int) -> float:
    call()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rates(args) -> dict[str, dict[str, float]]:
    """{matmul: {"jax": GFLOP/s, "torch": GFLOP/s}}; all of XLA's first, then all of PyTorch's, so that
    neither library's idle threads, still spinning, share the cores with the other's matmuls."""
    matmuls, rates = step_matmuls(args), {}
    rng = np.random.default_rng(0)
    operands = {name: [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]
                for name, (_, *shapes) in matmuls.items()}
    options = device_options(jax.devices()[0])
    for name, (equation, *_) in matmuls.items():
        product = jax.jit(lambda x, y, eq=equation: jnp.einsum(eq, x, y), compiler_options=options)
        lhs, rhs = (jnp.asarray(x) for x in operands[name])
        seconds = median_seconds(lambda: product(lhs, rhs).block_until_ready(), 10 * args.rounds)
        rates[name] = {"jax": einsum_flops(equation, lhs.shape, rhs.shape) / seconds / 1e9}
    for name, (equation, *_) in matmuls.items():
        lhs, rhs = (torch.from_numpy(x) for x in operands[name])
        seconds = median_seconds(lambda: torch.einsum(equation, lhs, rhs), 10 * args.rounds)
        rates[name]["torch"] = einsum_flops(equation, tuple(lhs.shape), tuple(rhs.shape)) / seconds / 1e9
    return {name: {side: round(rate, 1) for side, rate in sides.items()} for name, sides in rates.items()}


def cpu_description() -> dict:
    return {**hardware.cpu_description(), "torch_isa": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("d_model", 256), ("n_layers", 4), ("n_heads", 4), ("seq_len", 256), ("batch_size", 8),
                          ("vocab_size", 256), ("rounds", 20), ("warmup", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--layers", choices=tuple(LAYERS), default="default",
                        help="The scan over the layers looped or unrolled, or separate layers (default: the CPU's).")
    parser.add_argument("--matmuls", action="store_true", help="Time the step's matmuls alone in both libraries.")
    args = parser.parse_args()
    if args.matmuls:
        print(json.dumps({**vars(args), **cpu_description(), "gflops_per_s": matmul_rates(args)}))
        return
    steps = {"jax": JaxStep(args), "torch": TorchStep(args)}
    times = {name: [] for name in steps}
    for round_index in range(args.warmup + args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - start)
    tokens = args.batch_size * args.seq_len
    rates = {name: tokens / statistics.median(seconds) for name, seconds in times.items()}
    round_ratios = [torch_s / jax_s for jax_s, torch_s in zip(times["jax"], times["torch"])]
    print(json.dumps({**vars(args), **cpu_description(), "jax_tokens_per_s": rates["jax"],
                      "torch_tokens_per_s": rates["torch"], "ratio": statistics.median(round_ratios),
                      "jax_rounds_ms": [round(1e3 * s, 1) for s in times["jax"]],
                      "torch_rounds_ms": [round(1e3 * s, 1) for s in times["torch"]]}))


if __name__ == "__main__":
    main()
