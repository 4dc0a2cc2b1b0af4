"""Batched autoregressive sampling, shared by every architecture.

A model decodes incrementally when applied with its 'cache' collection mutable: softmax attention
keeps a KV cache of seq_len slots (scaling.nn.attention.cached_attention), TNL keeps the recurrent
state KV_t = lambda KV_{t-1} + k_t^T v_t per layer (scaling.nn.linear_attention.recurrent), whose size
does not depend on the number of tokens generated. The layer stack scans the cache like the
parameters, so a model decodes on its trained parameters as they are. Every call is `autoregressive`:
each position is computed from it and earlier tokens only, as sampling requires.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from scaling import compiler
from scaling.config import ModelConfig
from scaling.models.registry import get_architecture


class Decoder:
    """Feeds tokens [batch, n] at the next positions and returns their logits [batch, n, vocab].

    `capacity` bounds the total tokens fed (the KV cache size for softmax attention)."""

    def __init__(self, cfg: ModelConfig, params, capacity: int):
        self.params = params
        self.capacity = capacity
        self.cache = {}
        self.position = 0
        self._step = _decode_step(dataclasses.replace(cfg, seq_len=capacity, remat="none"))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        if self.position + tokens.shape[1] > self.capacity:
            raise ValueError(f"decoding past the capacity of {self.capacity} tokens")
        logits, self.cache = self._step(self.params, self.cache, jnp.asarray(tokens, jnp.int32), self.position)
        self.position += tokens.shape[1]
        return logits


@functools.lru_cache(maxsize=None)
def _decode_step(cfg: ModelConfig):
    """(params, cache, tokens [batch, n], first position) -> (logits, cache), jitted once per config."""
    model = get_architecture(cfg.arch).model(cfg)

    def step(params, cache, tokens, start):
        variables = {"params": params, **({"cache": cache} if cache else {})}
        positions = jnp.broadcast_to(start + jnp.arange(tokens.shape[1]), tokens.shape)
        logits, updated = model.apply(variables, tokens, positions, autoregressive=True, mutable=["cache"])
        return logits, updated["cache"]

    return jax.jit(step, compiler_options=compiler.device_options(jax.devices()[0]))


def choose(logits: jax.Array, key: jax.Array, temperature: float, top_k: int) -> jax.Array:
    """Next tokens [batch] from last-position logits [batch, vocab]: greedy at temperature 0, else a
    draw from softmax(logits / temperature) restricted to the top_k largest (0: all)."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


def sample(cfg: ModelConfig, params, prompt, num_tokens: int, *, temperature=1.0, top_k=0, seed=0) -> jax.Array:
    """Continues every row of `prompt` [batch, length] by `num_tokens` tokens: [batch, num_tokens]."""
    decoder = Decoder(cfg, params, prompt.shape[1] + num_tokens)
    logits = decoder(prompt)[:, -1]
    key = jax.random.key(seed)
    generated = []
    for _ in range(num_tokens):
        key, draw = jax.random.split(key)
        token = choose(logits, draw, temperature, top_k)
        generated.append(token)
        if len(generated) < num_tokens:
            logits = decoder(token[:, None])[:, -1]
    return jnp.stack(generated, axis=1)
