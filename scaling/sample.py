"""Batched autoregressive sampling, shared by every architecture.

A model decodes incrementally when applied with its 'cache' collection mutable: softmax attention
keeps a KV cache of seq_len slots (scaling.nn.attention.cached_attention), TNL keeps the recurrent
state KV_t = lambda KV_{t-1} + k_t^T v_t per layer (scaling.nn.linear_attention.recurrent), whose size
does not depend on the number of tokens generated. Every call is `autoregressive`: each position is
computed from it and earlier tokens only, as sampling requires. Decoding runs on separate layers
(`decoding_config`), the trained parameters' scanned repeats split once (`decoding_params`).

`sample` compiles the whole generation, prompt and every new token, as one program (a lax.scan over
the tokens carrying the cache, as MaxText and T5X decode): a step dispatched from Python per token
costs more than a small model's step itself. `Decoder` feeds tokens a call at a time.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from scaling import compiler
from scaling.config import ModelConfig
from scaling.models.registry import get_architecture
from scaling.nn.stack import separate_repeats


def decode_step(cfg: ModelConfig):
    """(params, cache, tokens [batch, n], first position) -> (logits [batch, n, vocab], cache); an
    empty cache {} starts a sequence."""
    model = get_architecture(cfg.arch).model(cfg)

    def step(params, cache, tokens, start):
        variables = {"params": params, **({"cache": cache} if cache else {})}
        positions = jnp.broadcast_to(start + jnp.arange(tokens.shape[1]), tokens.shape)
        logits, updated = model.apply(variables, tokens, positions, autoregressive=True, mutable=["cache"])
        return logits, updated["cache"]

    return step


def decoding_config(cfg: ModelConfig, capacity: int) -> ModelConfig:
    """The model of `cfg` decoding at most `capacity` tokens (its KV cache size), without remat, on
    separate layers (parameters: `decoding_params`)."""
    return dataclasses.replace(cfg, seq_len=capacity, remat="none", scan_layers=False)


def decoding_params(params):
    """Trained (scanned) parameters in the layout of `decoding_config`'s separate layers: each layer's
    weights sliced out of the stack once, where a step of the scanned stack slices them at every token
    (a copy, since XLA does not hoist it out of the token loop; a MoD block's lax.cond takes the copy
    whether it runs or not, all E experts of a Switch FFN in it)."""
    return {**params, "blocks": separate_repeats(params["blocks"])}


def _jit(fn):
    return jax.jit(fn, compiler_options=compiler.device_options(jax.devices()[0]))


class Decoder:
    """Feeds tokens [batch, n] at the next positions and returns their logits [batch, n, vocab].

    `capacity` bounds the total tokens fed (the KV cache size for softmax attention)."""

    def __init__(self, cfg: ModelConfig, params, capacity: int):
        self.params = decoding_params(params)
        self.capacity = capacity
        self.cache = {}
        self.position = 0
        self._step = _decode_step(decoding_config(cfg, capacity))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        if self.position + tokens.shape[1] > self.capacity:
            raise ValueError(f"decoding past the capacity of {self.capacity} tokens")
        logits, self.cache = self._step(self.params, self.cache, jnp.asarray(tokens, jnp.int32), self.position)
        self.position += tokens.shape[1]
        return logits


@functools.lru_cache(maxsize=None)
def _decode_step(cfg: ModelConfig):
    """`decode_step`, jitted once per config."""
    return _jit(decode_step(cfg))


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


@functools.lru_cache(maxsize=None)
def generation(cfg: ModelConfig, num_tokens: int, temperature: float, top_k: int):
    """(params, prompt [batch, length], key) -> [batch, num_tokens], jitted once per config and options
    (cfg: `decoding_config` for length + num_tokens): the prompt in one step, then a scan over the new
    tokens, each chosen from the last logits and fed back (the last chosen is not fed)."""
    step = decode_step(cfg)

    def generate(params, prompt, key):
        params = decoding_params(params)
        logits, cache = step(params, {}, prompt, 0)
        draws = jax.random.split(key, num_tokens)

        def feed_back(carry, draw):
            cache, last_logits, position = carry
            token = choose(last_logits, draw, temperature, top_k)
            logits, cache = step(params, cache, token[:, None], position)
            return (cache, logits[:, -1], position + 1), token

        start = (cache, logits[:, -1], jnp.asarray(prompt.shape[1], jnp.int32))
        (_, last_logits, _), fed = jax.lax.scan(feed_back, start, draws[:-1])
        last = choose(last_logits, draws[-1], temperature, top_k)
        return jnp.concatenate([fed.T, last[:, None]], axis=1)

    return _jit(generate)


def sample(cfg: ModelConfig, params, prompt, num_tokens: int, *, temperature=1.0, top_k=0, seed=0) -> jax.Array:
    """Continues every row of `prompt` [batch, length] by `num_tokens` tokens: [batch, num_tokens]."""
    prompt = jnp.asarray(prompt, jnp.int32)
    generate = generation(decoding_config(cfg, prompt.shape[1] + num_tokens), num_tokens, temperature, top_k)
    return generate(params, prompt, jax.random.key(seed))
