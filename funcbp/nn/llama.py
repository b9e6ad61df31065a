"""A Llama-style decoder-only transformer, as a composition: no backward in this file.

Architecture (Llama 2/3), for token ids (N, T):

    h₀ = E[ids]                                                   tok
    for each block:             (W = width, H = heads, G = kv_heads, Dh = W / H, F = hidden)
        a = rms_norm(h) ;  q|k|v = a W_qkvᵀ ;  q, k ← rope(q), rope(k)
        h = h + merge(attention(q, k, v)) W_oᵀ                    attn (a residual; H q heads
                                                                       share G kv heads)
        a = rms_norm(h)
        h = h + (silu(a W_gateᵀ) ⊙ a W_upᵀ) W_downᵀ                 mlp (a residual; SwiGLU)
    logits = rms_norm(h) W_headᵀ                                  norm, head (untied by default)

Every gradient comes from the ops' hand VJPs (`rms_norm`, `unembed` for the bias-free
projections, `rope`, `attention`/`flash_attention` with grouped heads, `swiglu`, `embedding`)
and the combinators' own backward rules: each residual adds its branch's dx to the skip's, the
``gate_up`` fan-out (`funcbp.nn.combinators.parallel`) adds the two projections' dx, the grouped
head split and the merge invert themselves, and a tied head (``tie_embeddings``) adds the
table's two gradients.

Params (``init(key, (T,), dtype)``), every weight in the (out, in) layout of ``torch.nn.Linear``::

    {"tok": {"table": (V, W)},
     "blocks": ({"attn": {"norm": {"gamma": (W,)}, "qkv": {"w": ((H + 2G)·Dh, W)}, "heads": {},
                          "rope": {}, "attention": {}, "merge": {}, "o": {"w": (W, H·Dh)}},
                 "mlp": {"norm": {"gamma"}, "gate_up": {"gate": {"w": (F, W)}, "up": {"w": (F, W)}},
                         "swiglu": {}, "down": {"w": (W, F)}}}, ...),
     "norm": {"gamma": (W,)}, "head": {"w": (V, W)}}          ("head": {} when tied)

Init: weights N(0, 0.02²); the two projections writing into the residual stream (``o``,
``down``) N(0, (0.02/√(2·layers))²); norms γ = 1.

Decoding with a KV cache: `init_cache(config, model, batch, length)` is a state for the model
whose attention layers hold their keys and values (`funcbp.nn.kv_cache`); ``model.apply(params,
cache, ids, train=False)`` then consumes T new ids at the cached position and returns the
advanced cache.

Hugging Face names (`to_hf`/`from_hf`; a flat dict of arrays, e.g. from safetensors). The
weights need no transpose: ``Project`` stores them (out, in) as ``nn.Linear`` does. The q and k
projections need no permutation either: `funcbp.ops.rope` uses HF's rotate-half pairs.

===================================================  ======================================
Hugging Face                                         funcbp
===================================================  ======================================
model.embed_tokens.weight (V, W)                     ['tok']['table']
model.layers.{i}.input_layernorm.weight              ['blocks'][i]['attn']['norm']['gamma']
model.layers.{i}.self_attn.{q,k,v}_proj.weight       ['blocks'][i]['attn']['qkv']['w'] rows
                                                     [q (H·Dh) | k (G·Dh) | v (G·Dh)]
model.layers.{i}.self_attn.o_proj.weight             ['blocks'][i]['attn']['o']['w']
model.layers.{i}.post_attention_layernorm.weight     ['blocks'][i]['mlp']['norm']['gamma']
model.layers.{i}.mlp.{gate,up}_proj.weight           ['blocks'][i]['mlp']['gate_up'][…]['w']
model.layers.{i}.mlp.down_proj.weight                ['blocks'][i]['mlp']['down']['w']
model.norm.weight                                    ['norm']['gamma']
lm_head.weight (V, W)                                ['head']['w'] (tied: ['tok']['table'])
===================================================  ======================================
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.nn import init as initializers
from funcbp.nn.attention import MergeHeads
from funcbp.nn.combinators import parallel, residual, serial, set_in, tie
from funcbp.nn.core import Layer
from funcbp.nn.embedding import Embedding
from funcbp.nn.kv_cache import KINDS, CausalAttention, cache_entry
from funcbp.nn.layers import Project, SwiGLU
from funcbp.nn.norm import RMSNorm
from funcbp.nn.remat import POLICIES, remat_segments
from funcbp.nn.rotary import GroupedSplitHeads, Rope

__all__ = ["LlamaConfig", "block", "from_hf", "init_cache", "llama", "to_hf"]


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"LlamaConfig: {name} must be a positive int, got {value!r}")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters of `llama`.

    vocab: token ids V; context: the longest training sequence C (also the KV cache's attention
    span when decoding past it); layers: blocks; width: the residual stream W; heads: query
    heads H (must divide W; Dh = W/H, even for RoPE); kv_heads: key/value heads G (must divide
    H; G = H is multi-head, G = 1 multi-query attention); hidden: the SwiGLU width F;
    rope_theta: RoPE's base θ; eps: RMSNorm's ε; tie_embeddings: the head reads the token
    table; attention: ``"dense"`` or ``"flash"`` (`funcbp.nn.kv_cache.KINDS`); block_size:
    flash attention's block; remat, remat_policy: as `funcbp.nn.gpt.GPTConfig`'s.
    """

    vocab: int
    context: int
    layers: int = 2
    width: int = 64
    heads: int = 4
    kv_heads: int = 2
    hidden: int = 176
    rope_theta: float = 10000.0
    eps: float = 1e-6
    tie_embeddings: bool = False
    attention: str = "dense"
    block_size: int = 128
    remat: int = 0
    remat_policy: str = "nothing_saveable"

    def __post_init__(self):
        for name in ("vocab", "context", "layers", "width", "heads", "kv_heads", "hidden",
                     "block_size"):  # fmt: skip
            _positive_int(name, getattr(self, name))
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(
                f"LlamaConfig: width {self.width} must be heads {self.heads} × an even head "
                f"size (RoPE rotates pairs)"
            )
        if self.heads % self.kv_heads:
            raise ValueError(
                f"LlamaConfig: heads {self.heads} must be a multiple of kv_heads {self.kv_heads}"
            )
        theta = self.rope_theta
        if isinstance(theta, bool) or not isinstance(theta, int | float) or not theta > 1:
            raise ValueError(f"LlamaConfig: rope_theta must be a number > 1, got {theta!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float) or self.eps < 0:
            raise ValueError(f"LlamaConfig: eps must be a number >= 0, got {self.eps!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(
                f"LlamaConfig: tie_embeddings must be a bool, got {self.tie_embeddings!r}"
            )
        if self.attention not in KINDS:
            raise ValueError(
                f"LlamaConfig: attention must be one of {KINDS}, got {self.attention!r}"
            )
        if isinstance(self.remat, bool) or not isinstance(self.remat, int) or self.remat < 0:
            raise ValueError(f"LlamaConfig: remat must be an int >= 0, got {self.remat!r}")
        if self.remat_policy not in POLICIES:
            raise ValueError(f"LlamaConfig: remat_policy must be one of {sorted(POLICIES)}, got "
                             f"{self.remat_policy!r}")  # fmt: skip

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def block(config: LlamaConfig) -> Layer:
    """One pre-norm block, (N, T, W) -> (N, T, W): ``serial(attn=residual(…), mlp=residual(…))``."""
    c, dh = config, config.head_dim
    weights = initializers.normal(0.02)
    writers = initializers.normal(0.02 / math.sqrt(2 * c.layers))  # into the stream
    attn = serial(
        norm=RMSNorm(c.eps),
        qkv=Project((c.heads + 2 * c.kv_heads) * dh, init=weights),  # rows [q | k | v]
        heads=GroupedSplitHeads(c.heads, c.kv_heads),  # q (N, H, T, Dh), k, v (N, G, T, Dh)
        rope=Rope(c.rope_theta),  # q, k rotated by their positions
        attention=CausalAttention(kind=c.attention, block_size=c.block_size, window=c.context),
        merge=MergeHeads(),  # (N, T, H·Dh)
        o=Project(c.width, init=writers),
        name="attn",
    )
    mlp = serial(
        norm=RMSNorm(c.eps),
        gate_up=parallel(gate=Project(c.hidden, init=weights), up=Project(c.hidden, init=weights)),
        swiglu=SwiGLU(),  # (N, T, F)
        down=Project(c.width, init=writers),
        name="mlp",
    )
    return serial(attn=residual(attn), mlp=residual(mlp), name="block")


def llama(config: LlamaConfig) -> Layer:
    """A Llama-style transformer: ids (N, T) int -> logits (N, T, vocab); see the module doc.

    ``init(key, (T,), dtype)`` returns ``((T, vocab), params, {})``."""
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"llama: config must be a LlamaConfig, got {type(config).__name__}")
    c = config
    blocks = serial(*(block(c) for _ in range(c.layers)), name="blocks")
    if c.remat:
        blocks = remat_segments(blocks, c.remat, c.remat_policy)
    name = f"llama-L{c.layers}-W{c.width}-H{c.heads}-G{c.kv_heads}-F{c.hidden}"
    body = serial(
        tok=Embedding(c.vocab, c.width, init=initializers.normal(0.02)),  # (N, T, W)
        blocks=blocks,
        norm=RMSNorm(c.eps),
        head=Project(c.vocab, init=initializers.normal(0.02)),  # (N, T, V)
        name=name,
    )
    if c.tie_embeddings:
        return tie(body, shared=("head", "w"), to=("tok", "table"), name=name)
    return body


def init_cache(config: LlamaConfig, model: Layer, batch: int, length: int, dtype=jnp.float32):
    """A KV-cache state for ``model`` (built by `llama` from ``config``): every block's rope
    and attention layers at position 0, buffers for ``length`` positions of ``batch`` rows."""
    state = jax.eval_shape(lambda k: model.init(k, (1,), dtype)[2], jax.random.key(0))
    entry = cache_entry(batch, config.kv_heads, length, config.head_dim, dtype)
    for i in range(config.layers):
        state = set_in(state, ("blocks", i, "attn", "rope"), {"pos": entry["pos"]})
        state = set_in(state, ("blocks", i, "attn", "attention"), entry)
    return state


# -- Hugging Face Llama names -------------------------------------------------------------
_BLOCK = (  # (HF name inside model.layers.{i}, funcbp path inside the block)
    ("input_layernorm.weight", ("attn", "norm", "gamma")),
    ("self_attn.o_proj.weight", ("attn", "o", "w")),
    ("post_attention_layernorm.weight", ("mlp", "norm", "gamma")),
    ("mlp.gate_proj.weight", ("mlp", "gate_up", "gate", "w")),
    ("mlp.up_proj.weight", ("mlp", "gate_up", "up", "w")),
    ("mlp.down_proj.weight", ("mlp", "down", "w")),
)
_QKV = ("q_proj", "k_proj", "v_proj")


def _shapes(c: LlamaConfig) -> dict:
    w, dh, f = c.width, c.head_dim, c.hidden
    return {
        "input_layernorm.weight": (w,),
        "self_attn.q_proj.weight": (c.heads * dh, w),
        "self_attn.k_proj.weight": (c.kv_heads * dh, w),
        "self_attn.v_proj.weight": (c.kv_heads * dh, w),
        "self_attn.o_proj.weight": (w, c.heads * dh),
        "post_attention_layernorm.weight": (w,),
        "mlp.gate_proj.weight": (f, w),
        "mlp.up_proj.weight": (f, w),
        "mlp.down_proj.weight": (w, f),
    }


def hf_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every Hugging Face name of ``config``'s model and its shape."""
    c, out = config, {"model.embed_tokens.weight": (config.vocab, config.width)}
    for i in range(c.layers):
        out.update({f"model.layers.{i}.{k}": s for k, s in _shapes(c).items()})
    out["model.norm.weight"] = (c.width,)
    if not c.tie_embeddings:
        out["lm_head.weight"] = (c.vocab, c.width)
    return out


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def to_hf(config: LlamaConfig, params) -> dict[str, np.ndarray]:
    """funcbp Llama params (or a gradient tree: the same structure) -> ``{hf_name: array}``."""
    c, dh = config, config.head_dim
    out = {"model.embed_tokens.weight": _get(params, ("tok", "table"))}
    bounds = np.cumsum([0, c.heads * dh, c.kv_heads * dh, c.kv_heads * dh])
    for i in range(c.layers):
        blk, pre = params["blocks"][i], f"model.layers.{i}."
        qkv = np.asarray(_get(blk, ("attn", "qkv", "w")))
        for name, a, b in zip(_QKV, bounds[:-1], bounds[1:], strict=True):
            out[f"{pre}self_attn.{name}.weight"] = qkv[a:b]
        out.update({pre + hf: _get(blk, path) for hf, path in _BLOCK})
    out["model.norm.weight"] = _get(params, ("norm", "gamma"))
    if not c.tie_embeddings:
        out["lm_head.weight"] = _get(params, ("head", "w"))
    out = {k: np.asarray(v) for k, v in out.items()}
    for name, shape in hf_shapes(c).items():
        if out[name].shape != shape:
            raise ValueError(f"to_hf: {name} is {out[name].shape}, {config} expects {shape}")
    return out


def _check_state(config: LlamaConfig, state: dict) -> dict:
    """The state without a tied ``lm_head.weight`` (which must equal the table); errors name
    missing, unknown and mis-shaped entries."""
    state = dict(state)
    if config.tie_embeddings and "lm_head.weight" in state:
        head = np.asarray(state.pop("lm_head.weight"))
        if not np.array_equal(head, np.asarray(state.get("model.embed_tokens.weight"))):
            raise ValueError("from_hf: lm_head.weight differs from model.embed_tokens.weight, "
                             "but the config ties the head to the token table")  # fmt: skip
    shapes = hf_shapes(config)
    missing = [k for k in shapes if k not in state]
    unknown = sorted(k for k in state if k not in shapes and not k.endswith("rotary_emb.inv_freq"))
    if missing or unknown:
        raise ValueError(f"from_hf: the state does not fit {config}: missing {missing[:6]}"
                         f"{' …' if len(missing) > 6 else ''}, unknown {unknown[:6]}"
                         f"{' …' if len(unknown) > 6 else ''}")  # fmt: skip
    for name, shape in shapes.items():
        if tuple(np.shape(state[name])) != shape:
            raise ValueError(f"from_hf: {name} has shape {np.shape(state[name])}, expected {shape}")
    return state


def _block_params(state: dict, pre: str, arr) -> dict:
    qkv = np.concatenate([np.asarray(state[f"{pre}self_attn.{n}.weight"]) for n in _QKV], axis=0)
    attn = {"norm": {}, "qkv": {"w": arr(qkv)}, "heads": {}, "rope": {}, "attention": {},
            "merge": {}, "o": {}}  # fmt: skip
    mlp = {"norm": {}, "gate_up": {"gate": {}, "up": {}}, "swiglu": {}, "down": {}}
    blk = {"attn": attn, "mlp": mlp}
    for hf, path in _BLOCK:
        blk = set_in(blk, path, arr(state[pre + hf]))
    return blk


def from_hf(config: LlamaConfig, state: dict, *, dtype=None):
    """``{hf_name: array}`` -> funcbp Llama params for ``config`` (arrays as ``dtype``, default
    their own). Rotary ``inv_freq`` buffers are ignored (RoPE is computed from ``rope_theta``);
    raises ``ValueError`` naming missing, unknown or mis-shaped entries."""
    state = _check_state(config, state)
    arr = lambda a: jnp.asarray(np.asarray(a), dtype)
    params = {
        "tok": {"table": arr(state["model.embed_tokens.weight"])},
        "blocks": tuple(
            _block_params(state, f"model.layers.{i}.", arr) for i in range(config.layers)
        ),
        "norm": {"gamma": arr(state["model.norm.weight"])},
        "head": {} if config.tie_embeddings else {"w": arr(state["lm_head.weight"])},
    }
    return params
