"""The GPT as it was before the one-engine rewrite (funcbp 93a5a3b): ONE monolithic layer with
its own hand-written backward. Kept only as the baseline of `benchmarks.gpt_bench`, which
measures the composed `funcbp.nn.gpt` against it side by side in one process. Not part of the
library; edits from the original: ``gradients`` is now ``source``, imports.

Architecture (GPT-2 style, pre-LN), for token ids (N, T) with T <= ``context``:

    h₀ = E[ids] + P[0..T)                               token + learned position embeddings
    for each block:                                     (W = width, H = heads, Dh = W / H)
        a  = layer_norm(h)                              (N, T, W)
        q, k, v = split_heads(linear(a, W_qkv, b_qkv))  (N, T, 3W) -> 3 × (N, H, T, Dh)
        h  = h + linear(merge_heads(attention(q, k, v, causal)), W_o, b_o)
        m  = gelu_tanh(linear(layer_norm(h), W_fc, b_fc))        (N, T, mlp_ratio·W)
        h  = h + linear(m, W_out, b_out)
    logits = unembed(layer_norm(h), E) = LN(h) Eᵀ       (N, T, V): the head is TIED to E

Params are a plain dict: ``tok`` (V, W), ``pos`` (context, W), ``blocks`` (a tuple of one dict
per block: ``ln1_gamma, ln1_beta, qkv_w, qkv_b, proj_w, proj_b, ln2_gamma, ln2_beta, fc_w,
fc_b, out_w, out_b``), ``ln_f_gamma``, ``ln_f_beta``. There is no dropout (``key``/``train``
are accepted and unused) and no state (``{}``).

Three gradient paths, as for every funcbp model:

* ``apply(..., gradients="hand")``: the ops' custom VJPs under `jax.grad` (JAX itself only
  transposes the glue: reshapes, head transposes, broadcasts and residual adds);
* ``apply(..., gradients="autodiff")``: the ops' plain references, differentiated by `jax.grad`;
* ``forward``/``backward``: the explicit engine. ``forward`` runs each op's ``fwd`` and keeps its
  residuals in a tape (a dict keyed ``"<block>.<op>"``); ``backward`` walks the blocks in
  reverse calling each op's ``bwd`` — no `jax.grad`/`jax.vjp` anywhere. The glue is undone by
  hand: the head merge's reshape/transpose is inverted, the q/k/v split is re-stacked, each
  residual add sends its incoming gradient down *both* branches (and the two arriving at the
  block input are summed), the position embedding's broadcast over the batch becomes a sum over
  it, and the tied table's two gradients (embedding scatter-add and head GEMM) add up.

Init (GPT-2 practice): weights N(0, 0.02²); the two projections that write into the residual
stream (``proj_w``, ``out_w``) N(0, (0.02/√(2·layers))²) so the stream's variance does not grow
with depth; biases 0; layer-norm γ = 1, β = 0.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from funcbp.backprop import check_source
from funcbp.nn.core import Layer
from funcbp.ops import attention, embedding, gelu, layer_norm, linear, unembed

__all__ = ["LegacyGPTConfig", "gpt", "BLOCK_PARAMS"]

BLOCK_PARAMS = (
    "ln1_gamma",
    "ln1_beta",
    "qkv_w",
    "qkv_b",
    "proj_w",
    "proj_b",
    "ln2_gamma",
    "ln2_beta",
    "fc_w",
    "fc_b",
    "out_w",
    "out_b",
)
"""The parameter names of one transformer block, in forward order."""


@dataclasses.dataclass(frozen=True)
class LegacyGPTConfig:
    """Hyperparameters of `gpt`.

    vocab: number of token ids V; context: the longest sequence T (rows of the position table);
    layers: transformer blocks; heads: attention heads H (must divide ``width``); width: the
    residual stream's size W; mlp_ratio: the MLP's hidden size is ``mlp_ratio · width``; eps:
    the layer norms' ε.
    """

    vocab: int
    context: int
    layers: int = 2
    heads: int = 4
    width: int = 64
    mlp_ratio: int = 4
    eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab", "context", "layers", "heads", "width", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LegacyGPTConfig: {name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(
                f"LegacyGPTConfig: width {self.width} must be divisible by heads {self.heads}"
            )
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float) or self.eps < 0:
            raise ValueError(f"LegacyGPTConfig: eps must be a number >= 0, got {self.eps!r}")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def hidden(self) -> int:
        return self.mlp_ratio * self.width


# -- the head split and its hand inverse ----------------------------------------------------
def _split_qkv(qkv, heads):
    """(N, T, 3W) -> q, k, v, each (N, H, T, Dh): columns [q | k | v], each split into heads."""
    n, t, w3 = qkv.shape
    dh = w3 // (3 * heads)
    x = qkv.reshape(n, t, 3, heads, dh)  # (N, T, 3, H, Dh)
    x = x.transpose(2, 0, 3, 1, 4)  # (3, N, H, T, Dh)
    return x[0], x[1], x[2]


def _split_qkv_grad(dq, dk, dv):
    """The VJP of `_split_qkv` (its inverse, as it only moves entries): 3 × (N, H, T, Dh) ->
    (N, T, 3W)."""
    n, h, t, dh = dq.shape
    x = jnp.stack([dq, dk, dv])  # (3, N, H, T, Dh)
    x = x.transpose(1, 3, 0, 2, 4)  # (N, T, 3, H, Dh): the inverse permutation
    return x.reshape(n, t, 3 * h * dh)  # (N, T, 3W)


def _merge_heads(o):
    """(N, H, T, Dh) -> (N, T, W): the heads' outputs side by side."""
    n, h, t, dh = o.shape
    return o.transpose(0, 2, 1, 3).reshape(n, t, h * dh)  # (N, T, H, Dh) -> (N, T, W)


def _merge_heads_grad(dy, heads):
    """The VJP of `_merge_heads` (its inverse): (N, T, W) -> (N, H, T, Dh)."""
    n, t, w = dy.shape
    return dy.reshape(n, t, heads, w // heads).transpose(0, 2, 1, 3)  # (N, H, T, Dh)


# -- forward, shared by apply (either path) and the explicit engine ---------------------------
def _block(config, p, h, run):
    """One pre-LN block on the residual stream h (N, T, W); ``run(tag, op, *arrays, **static)``
    calls one op (tags name its residuals in the explicit engine's tape)."""
    eps = config.eps
    a = run("ln1", layer_norm, h, p["ln1_gamma"], p["ln1_beta"], eps=eps)  # (N, T, W)
    qkv = run("qkv", linear, a, p["qkv_w"], p["qkv_b"])  # (N, T, 3W)
    q, k, v = _split_qkv(qkv, config.heads)  # 3 × (N, H, T, Dh)
    o = run("attn", attention, q, k, v, causal=True)  # (N, H, T, Dh)
    h = h + run("proj", linear, _merge_heads(o), p["proj_w"], p["proj_b"])  # (N, T, W)
    m = run("ln2", layer_norm, h, p["ln2_gamma"], p["ln2_beta"], eps=eps)  # (N, T, W)
    m = run("fc", linear, m, p["fc_w"], p["fc_b"])  # (N, T, 4W)
    m = run("gelu", gelu, m, approximate=True)  # (N, T, 4W)
    return h + run("out", linear, m, p["out_w"], p["out_b"])  # (N, T, W)


def _forward(config, params, ids, run):
    """ids (N, T) int -> logits (N, T, V), every op through ``run``."""
    t = ids.shape[1]
    tok = run("tok", embedding, ids, params["tok"])  # (N, T, W)
    pos = run("pos", embedding, jnp.arange(t), params["pos"])  # (T, W)
    h = tok + pos.reshape(1, *pos.shape)  # (N, T, W): positions broadcast over the batch
    for i, p in enumerate(params["blocks"]):
        h = _block(config, p, h, lambda tag, *a, i=i, **s: run(f"{i}.{tag}", *a, **s))
    hf = run("ln_f", layer_norm, h, params["ln_f_gamma"], params["ln_f_beta"], eps=config.eps)
    return run("head", unembed, hf, params["tok"])  # (N, T, V): tied to the token table


# -- the explicit reverse pass ---------------------------------------------------------------
def _block_backward(config, tape, i, dh):
    """dL/d(block output) (N, T, W) -> (block param grads, dL/d(block input)).

    Each residual add ``h_out = h_in + f(h_in)`` passes dh_out unchanged to ``h_in`` *and*
    into ``f``; ``f``'s gradient with respect to ``h_in`` is then added to it. The weights
    needed for the input gradients come from the tape (each linear keeps its W).
    """
    eps = config.eps
    res = lambda tag: tape[f"{i}.{tag}"]
    g = {}
    # h2 = h1 + out(gelu(fc(ln2(h1))))
    dm, g["out_w"], g["out_b"] = linear.bwd(res("out"), dh)  # (N, T, 4W)
    (dm,) = gelu.bwd(res("gelu"), dm, approximate=True)  # (N, T, 4W)
    dm, g["fc_w"], g["fc_b"] = linear.bwd(res("fc"), dm)  # (N, T, W)
    dln, g["ln2_gamma"], g["ln2_beta"] = layer_norm.bwd(res("ln2"), dm, eps=eps)
    dh = dh + dln  # (N, T, W): identity branch + MLP branch
    # h1 = h0 + proj(merge(attention(split(qkv(ln1(h0))))))
    do, g["proj_w"], g["proj_b"] = linear.bwd(res("proj"), dh)  # (N, T, W)
    do = _merge_heads_grad(do, config.heads)  # (N, H, T, Dh)
    dq, dk, dv = attention.bwd(res("attn"), do, causal=True)  # 3 × (N, H, T, Dh)
    dqkv = _split_qkv_grad(dq, dk, dv)  # (N, T, 3W)
    da, g["qkv_w"], g["qkv_b"] = linear.bwd(res("qkv"), dqkv)  # (N, T, W)
    dln, g["ln1_gamma"], g["ln1_beta"] = layer_norm.bwd(res("ln1"), da, eps=eps)
    dh = dh + dln  # (N, T, W): identity branch + attention branch
    return {name: g[name] for name in BLOCK_PARAMS}, dh


def _backward(config, params, tape, dlogits):
    """dL/dlogits (N, T, V) -> (grads with the structure of params, None: ids get none)."""
    dhf, dtok_head = unembed.bwd(tape["head"], dlogits)  # (N, T, W), (V, W)
    dh, dgamma, dbeta = layer_norm.bwd(tape["ln_f"], dhf, eps=config.eps)  # (N, T, W)
    blocks = [None] * config.layers
    for i in reversed(range(len(params["blocks"]))):
        blocks[i], dh = _block_backward(config, tape, i, dh)
    # h0 = tok + pos (broadcast over the batch): both get dh; the broadcast becomes a sum
    _, dtok_emb = embedding.bwd(tape["tok"], dh)  # (V, W)
    _, dpos = embedding.bwd(tape["pos"], jnp.sum(dh, axis=0))  # (context, W)
    grads = {
        "tok": dtok_head + dtok_emb,  # the tied table is used twice: its gradients add up
        "pos": dpos,
        "blocks": tuple(blocks),
        "ln_f_gamma": dgamma,
        "ln_f_beta": dbeta,
    }
    return grads, None


# -- the layer ---------------------------------------------------------------------------------
def _check_ids(config, ids):
    if not hasattr(ids, "shape") or not hasattr(ids, "dtype"):
        raise TypeError(f"gpt: ids must be an integer array (N, T), got {type(ids).__name__}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"gpt: ids must be integer token ids, got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"gpt: ids must have shape (N, T), got {tuple(ids.shape)}")
    if not 1 <= ids.shape[1] <= config.context:
        raise ValueError(
            f"gpt: sequence length T={ids.shape[1]} must be between 1 and the context "
            f"{config.context} (ids {tuple(ids.shape)})"
        )


def _init_params(config, key, dtype):
    std = 0.02
    proj_std = std / math.sqrt(2 * config.layers)  # residual-stream writers (GPT-2)
    w, hid = config.width, config.hidden
    k_tok, k_pos, *k_blocks = jax.random.split(key, 2 + config.layers)
    normal = lambda k, shape, s: s * jax.random.normal(k, shape, dtype)
    ones, zeros = (lambda n: jnp.ones((n,), dtype)), (lambda n: jnp.zeros((n,), dtype))
    blocks = []
    for kb in k_blocks:
        k1, k2, k3, k4 = jax.random.split(kb, 4)
        blocks.append({
            "ln1_gamma": ones(w), "ln1_beta": zeros(w),
            "qkv_w": normal(k1, (w, 3 * w), std), "qkv_b": zeros(3 * w),
            "proj_w": normal(k2, (w, w), proj_std), "proj_b": zeros(w),
            "ln2_gamma": ones(w), "ln2_beta": zeros(w),
            "fc_w": normal(k3, (w, hid), std), "fc_b": zeros(hid),
            "out_w": normal(k4, (hid, w), proj_std), "out_b": zeros(w),
        })  # fmt: skip
    return {
        "tok": normal(k_tok, (config.vocab, w), std),
        "pos": normal(k_pos, (config.context, w), std),
        "blocks": tuple(blocks),
        "ln_f_gamma": ones(w),
        "ln_f_beta": zeros(w),
    }


def gpt(config: LegacyGPTConfig) -> Layer:
    """A GPT-style transformer: ids (N, T) int -> logits (N, T, vocab); see the module doc.

    ``init(key, (T,), dtype)`` with ``T <= config.context`` returns ``((T, vocab), params, {})``.
    """
    if not isinstance(config, LegacyGPTConfig):
        raise TypeError(f"gpt: config must be a LegacyGPTConfig, got {type(config).__name__}")

    def init(key, input_shape, dtype):
        if len(input_shape) != 1 or not 1 <= input_shape[0] <= config.context:
            raise ValueError(
                f"gpt: input shape must be (T,) with 1 <= T <= context {config.context}, "
                f"got {tuple(input_shape)}"
            )
        return (input_shape[0], config.vocab), _init_params(config, key, dtype), {}

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        check_source(source)
        _check_ids(config, x)
        run = lambda tag, op, *arrays, **static: op.path(source)(*arrays, **static)
        return _forward(config, params, x, run), state

    def forward(params, state, x, *, key=None, train=False):
        _check_ids(config, x)
        tape = {}

        def run(tag, op, *arrays, **static):
            if op.validate is not None:
                op.validate(*arrays, **static)
            out, tape[tag] = op.fwd(*arrays, **static)
            return out

        return _forward(config, params, x, run), state, tape

    def backward(params, tape, dy):
        return _backward(config, params, tape, dy)

    name = f"gpt-L{config.layers}-W{config.width}-H{config.heads}"
    return Layer(name, init, apply, forward, backward)
