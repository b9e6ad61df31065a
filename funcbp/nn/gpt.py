"""A GPT-style decoder-only transformer, as a composition: no backward in this file.

Architecture (GPT-2 style, pre-LN), for token ids (N, T) with T <= ``context``:

    h₀ = E[ids] + P[0..T)                               tok, pos
    for each block:                                     (W = width, H = heads, Dh = W / H)
        h = h + proj(merge(attention(split(qkv(ln(h))))))      attn  (a residual)
        h = h + proj(gelu_tanh(fc(ln(h))))                     mlp   (a residual)
    logits = unembed(ln_f(h), E) = LN(h) Eᵀ             head, TIED to the token table E

Every gradient comes from the ops' hand VJPs and the combinators' own backward rules
(`funcbp.nn.combinators`): each residual sends its gradient down both branches and adds them,
the head split/merge invert themselves, the position embedding's broadcast becomes a sum over
the batch, and the tied table's two gradients (embedding scatter-add and head GEMM) add up.

Params (``init(key, (T,), dtype)``)::

    {"tok": {"table": (V, W)}, "pos": {"table": (context, W)},
     "blocks": ({"attn": {"ln": {gamma, beta}, "qkv": {w: (W, 3W), b}, "heads": {},
                          "attention": {}, "merge": {}, "proj": {w: (W, W), b}},
                 "mlp": {"ln": {...}, "fc": {w: (W, 4W), b}, "gelu": {}, "proj": {w, b}}}, ...),
     "ln_f": {gamma, beta}, "head": {}}

Init (GPT-2 practice): weights N(0, 0.02²); the two projections that write into the residual
stream N(0, (0.02/√(2·layers))²), so the stream's variance does not grow with depth; biases 0;
layer-norm γ = 1, β = 0.

Weights from the ecosystem: `to_hf(config, params)` flattens funcbp's params (or a gradient
tree: the same structure) into a dict keyed by the Hugging Face GPT-2 names, and
`from_hf(config, state)` is its inverse, so a user holding GPT-2 weights locally (e.g.
``safetensors.numpy.load_file``) can load and fine-tune them with hand VJPs. The layout needs
no transposes: GPT-2's ``Conv1D`` weights are stored (in, out) like funcbp's ``Dense``, and
``c_attn``'s output columns are ``[q | k | v]``, each split into heads, exactly as
`funcbp.nn.attention.SplitHeads` reads them.

===========================================  ==========================================
Hugging Face                                 funcbp
===========================================  ==========================================
transformer.wte.weight (V, W)                ['tok']['table']  (also the tied head)
transformer.wpe.weight (context, W)          ['pos']['table']
transformer.h.{i}.ln_1.weight / .bias        ['blocks'][i]['attn']['ln']['gamma'/'beta']
transformer.h.{i}.attn.c_attn.weight / .bias ['blocks'][i]['attn']['qkv']['w'/'b']
transformer.h.{i}.attn.c_proj.weight / .bias ['blocks'][i]['attn']['proj']['w'/'b']
transformer.h.{i}.ln_2.weight / .bias        ['blocks'][i]['mlp']['ln']['gamma'/'beta']
transformer.h.{i}.mlp.c_fc.weight / .bias    ['blocks'][i]['mlp']['fc']['w'/'b']
transformer.h.{i}.mlp.c_proj.weight / .bias  ['blocks'][i]['mlp']['proj']['w'/'b']
transformer.ln_f.weight / .bias              ['ln_f']['gamma'/'beta']
===========================================  ==========================================

``from_hf`` also accepts the keys without the ``transformer.`` prefix (a ``GPT2Model`` state),
ignores the attention-mask buffers (``attn.bias``, ``attn.masked_bias``), and accepts an
``lm_head.weight`` only if it equals the token table (the head is tied).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from funcbp.nn import init as initializers
from funcbp.nn.attention import KINDS, Attention, MergeHeads, SplitHeads
from funcbp.nn.combinators import residual, serial, tie
from funcbp.nn.core import Layer
from funcbp.nn.embedding import Embedding, HeadInputs, PositionEmbedding, Unembed
from funcbp.nn.layers import Dense, Gelu
from funcbp.nn.norm import LayerNorm
from funcbp.nn.remat import POLICIES, remat_segments

__all__ = ["HEADS", "GPTConfig", "block", "from_hf", "gpt", "to_hf"]

HEADS = ("full", "chunked")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Hyperparameters of `gpt`.

    vocab: number of token ids V; context: the longest sequence T (rows of the position table);
    layers: transformer blocks; heads: attention heads H (must divide ``width``); width: the
    residual stream's size W; mlp_ratio: the MLP's hidden size is ``mlp_ratio · width``; eps:
    the layer norms' ε; remat: blocks per rematerialised segment (`funcbp.nn.remat_segments`:
    1 recomputes each block's insides on the backward pass instead of keeping them; 0 keeps
    everything); remat_policy: what a segment may still save (`funcbp.nn.remat.POLICIES`);
    attention: ``"dense"`` or ``"flash"`` (`funcbp.nn.Attention`; blockwise in ``block_size``,
    for long contexts); head: ``"full"`` (the model outputs logits) or ``"chunked"`` (it
    outputs ``(h, E)`` for the fused, chunked loss `funcbp.ops.unembed_cross_entropy`: large
    vocabularies).
    """

    vocab: int
    context: int
    layers: int = 2
    heads: int = 4
    width: int = 64
    mlp_ratio: int = 4
    eps: float = 1e-5
    remat: int = 0
    remat_policy: str = "nothing_saveable"
    attention: str = "dense"
    block_size: int = 128
    head: str = "full"

    def __post_init__(self):
        for name in ("vocab", "context", "layers", "heads", "width", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig: {name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(
                f"GPTConfig: width {self.width} must be divisible by heads {self.heads}"
            )
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float) or self.eps < 0:
            raise ValueError(f"GPTConfig: eps must be a number >= 0, got {self.eps!r}")
        if isinstance(self.remat, bool) or not isinstance(self.remat, int) or self.remat < 0:
            raise ValueError(f"GPTConfig: remat must be an int >= 0, got {self.remat!r}")
        if self.attention not in KINDS:
            raise ValueError(f"GPTConfig: attention must be one of {KINDS}, got {self.attention!r}")
        if self.head not in HEADS:
            raise ValueError(f"GPTConfig: head must be one of {HEADS}, got {self.head!r}")
        if (
            isinstance(self.block_size, bool)
            or not isinstance(self.block_size, int)
            or (self.block_size < 1)
        ):
            raise ValueError(
                f"GPTConfig: block_size must be a positive int, got {self.block_size!r}"
            )
        if self.remat_policy not in POLICIES:
            raise ValueError(
                f"GPTConfig: remat_policy must be one of {sorted(POLICIES)}, got "
                f"{self.remat_policy!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def hidden(self) -> int:
        return self.mlp_ratio * self.width


def block(config: GPTConfig) -> Layer:
    """One pre-LN block, (N, T, W) -> (N, T, W): ``serial(attn=residual(...),
    mlp=residual(...))``."""
    w, eps = config.width, config.eps
    weights = initializers.normal(0.02)
    writers = initializers.normal(0.02 / math.sqrt(2 * config.layers))  # into the stream
    attn = serial(
        ln=LayerNorm(eps),
        qkv=Dense(3 * w, init=weights),  # (N, T, 3W): columns [q | k | v]
        heads=SplitHeads(config.heads, 3),  # 3 × (N, H, T, Dh)
        attention=Attention(causal=True, kind=config.attention, block_size=config.block_size),
        merge=MergeHeads(),  # (N, T, W)
        proj=Dense(w, init=writers),
        name="attn",
    )
    mlp = serial(
        ln=LayerNorm(eps),
        fc=Dense(config.hidden, init=weights),  # (N, T, 4W)
        gelu=Gelu(approximate=True),
        proj=Dense(w, init=writers),
        name="mlp",
    )
    return serial(attn=residual(attn), mlp=residual(mlp), name="block")


def gpt(config: GPTConfig) -> Layer:
    """A GPT-style transformer: ids (N, T) int -> logits (N, T, vocab); see the module doc.

    ``init(key, (T,), dtype)`` with ``T <= config.context`` returns ``((T, vocab), params, {})``.
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"gpt: config must be a GPTConfig, got {type(config).__name__}")
    blocks = serial(*(block(config) for _ in range(config.layers)), name="blocks")
    if config.remat:
        blocks = remat_segments(blocks, config.remat, config.remat_policy)
    name = f"gpt-L{config.layers}-W{config.width}-H{config.heads}"
    body = serial(
        tok=Embedding(config.vocab, config.width),  # (N, T, W)
        pos=PositionEmbedding(config.context, config.width),  # + P[0..T)
        blocks=blocks,
        ln_f=LayerNorm(config.eps),
        head=(Unembed if config.head == "full" else HeadInputs)(config.vocab, config.width),
        name=name,
    )
    return tie(body, shared=("head", "table"), to=("tok", "table"), name=name)


# -- Hugging Face GPT-2 names ------------------------------------------------------------
_LN = (("weight", "gamma"), ("bias", "beta"))
_DENSE = (("weight", "w"), ("bias", "b"))
_BLOCK = (  # (HF module, funcbp path inside the block, parameter names)
    ("ln_1", ("attn", "ln"), _LN),
    ("attn.c_attn", ("attn", "qkv"), _DENSE),
    ("attn.c_proj", ("attn", "proj"), _DENSE),
    ("ln_2", ("mlp", "ln"), _LN),
    ("mlp.c_fc", ("mlp", "fc"), _DENSE),
    ("mlp.c_proj", ("mlp", "proj"), _DENSE),
)
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def _entries(config: GPTConfig):
    """``(hf_name, path into params, shape)`` for every parameter of ``config``'s GPT."""
    w, v, hid = config.width, config.vocab, config.hidden
    shapes = {
        ("attn", "ln"): ((w,), (w,)),
        ("attn", "qkv"): ((w, 3 * w), (3 * w,)),
        ("attn", "proj"): ((w, w), (w,)),
        ("mlp", "ln"): ((w,), (w,)),
        ("mlp", "fc"): ((w, hid), (hid,)),
        ("mlp", "proj"): ((hid, w), (w,)),
    }
    yield "transformer.wte.weight", ("tok", "table"), (v, w)
    yield "transformer.wpe.weight", ("pos", "table"), (config.context, w)
    for i in range(config.layers):
        for module, path, names in _BLOCK:
            for (hf, ours), shape in zip(names, shapes[path], strict=True):
                yield f"transformer.h.{i}.{module}.{hf}", ("blocks", i, *path, ours), shape
    for hf, ours in _LN:
        yield f"transformer.ln_f.{hf}", ("ln_f", ours), (w,)


def to_hf(config: GPTConfig, params) -> dict[str, np.ndarray]:
    """funcbp GPT params (or gradients) -> ``{hf_name: np.ndarray}`` (see the module doc)."""
    out = {}
    for name, path, shape in _entries(config):
        value = params
        for p in path:
            value = value[p]
        value = np.asarray(value)
        if value.shape != shape:
            raise ValueError(f"to_hf: {list(path)} is {value.shape}, {config} expects {shape}")
        out[name] = value
    return out


def _normalise(state: dict) -> dict:
    """Prefix ``transformer.`` where a GPT2Model state omits it; drop the mask buffers."""
    out = {}
    for key, value in state.items():
        if any(key.endswith(b) for b in _BUFFERS):
            continue
        if not key.startswith(("transformer.", "lm_head.")):
            key = f"transformer.{key}"
        out[key] = value
    return out


def from_hf(config: GPTConfig, state: dict, *, dtype=None):
    """``{hf_name: array}`` -> funcbp GPT params for ``config`` (arrays as ``dtype``, default
    their own). Raises ``ValueError`` naming missing, unknown or mis-shaped entries."""
    import jax.numpy as jnp

    state = _normalise(dict(state))
    head = state.pop("lm_head.weight", None)
    entries = list(_entries(config))
    missing = [name for name, _, _ in entries if name not in state]
    unknown = sorted(set(state) - {name for name, _, _ in entries})
    if missing or unknown:
        raise ValueError(
            f"from_hf: the state does not fit {config}: missing {missing[:6]}"
            f"{' …' if len(missing) > 6 else ''}, unknown {unknown[:6]}"
            f"{' …' if len(unknown) > 6 else ''}"
        )
    params = {"tok": {}, "pos": {}, "ln_f": {}, "head": {}}
    blocks = [{"attn": {}, "mlp": {}} for _ in range(config.layers)]
    for name, path, shape in entries:
        value = np.asarray(state[name])
        if value.shape != shape:
            raise ValueError(f"from_hf: {name} has shape {value.shape}, expected {shape}")
        node = blocks[path[1]] if path[0] == "blocks" else params
        for p in path[2:-1] if path[0] == "blocks" else path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.asarray(value, dtype)
    if head is not None and not np.array_equal(np.asarray(head), state["transformer.wte.weight"]):
        raise ValueError("from_hf: lm_head.weight differs from transformer.wte.weight, but the "
                         "funcbp GPT ties its head to the token table")  # fmt: skip
    params["blocks"] = tuple(_with_glue(b) for b in blocks)
    return params


def _with_glue(block: dict) -> dict:
    """A block's params in the composition's order, with the glue layers' empty entries."""
    a, m = block["attn"], block["mlp"]
    return {
        "attn": {"ln": a["ln"], "qkv": a["qkv"], "heads": {}, "attention": {}, "merge": {},
                 "proj": a["proj"]},
        "mlp": {"ln": m["ln"], "fc": m["fc"], "gelu": {}, "proj": m["proj"]},
    }  # fmt: skip
