"""The one protocol: an op is a reference forward, a residual-keeping forward and a hand VJP
(and a hand JVP: both modes of differentiation, written by hand).

`Op` bundles the pieces with a validator and a sampler of random valid inputs, builds the
public `jax.custom_vjp` function from them (and, from ``jvp``, the `jax.custom_jvp` function
``op.forward_mode``), and `register` puts it in `REGISTRY`, which every test, the `funcbp check`
report, the notebooks and the benchmarks iterate.

Calling convention shared by all three pieces, for an op with signature
``name(a1, ..., ak, *, s1=..., sm=...)``:

* the first ``k`` parameters are arrays (differentiable when inexact, e.g. integer labels are not);
* the remaining parameters are *static* configuration (axis, stride, rate, ...): hashable Python
  values, passed positionally or by keyword, never traced;
* ``reference(*arrays, **static) -> out``  plain `jax.numpy`, no custom rule: ground truth;
* ``fwd(*arrays, **static) -> (out, residuals)``  the same forward, keeping what ``bwd`` needs;
* ``bwd(residuals, g, **static) -> tuple``  one cotangent per array (``None`` for integer ones);
* ``jvp(primals, tangents, **static) -> (out, tangent_out)``  the hand forward-mode rule: one
  tangent per array (those of integer arrays and PRNG keys are `float0` and ignored), linear in
  the tangents and written in differentiable `jax.numpy`, so JAX can transpose it (reverse mode
  of ``forward_mode``) and differentiate it again (`jax.hessian`);
* ``validate(*arrays, **static)`` raises a clear error at trace time (shapes/dtypes are static);
* ``sample(key, dtype) -> (arrays, static)`` random valid inputs of random shapes;
* ``primal(*arrays, **static) -> out`` (optional) the forward run when nothing is
  differentiated (default: ``reference``): an op whose reference materialises what its hand path
  avoids (a T × S attention matrix, N × V logits) gives its memory-lean forward here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax

from funcbp.ops._precision import cast_floats

__all__ = ["Op", "REGISTRY", "register"]

REGISTRY: dict[str, Op] = {}


def _freeze(value: Any) -> Any:
    """Make static config hashable: lists become tuples (recursively)."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True, eq=False)
class Op:
    """A differentiable primitive defined three times, side by side.

    Attributes:
      name: registry key and the name used in every error message.
      reference: plain `jax.numpy` forward, differentiated by `jax.grad` as ground truth.
      fwd: forward returning ``(out, residuals)`` for `jax.custom_vjp`.
      bwd: hand-derived VJP ``(residuals, g, **static) -> tuple of cotangents``.
      sample: ``(key, dtype) -> (arrays, static)``: random valid inputs of random shapes.
      validate: raises ``ValueError``/``TypeError`` naming the op for bad input; may be ``None``.
      n_arrays: how many leading parameters are arrays; the rest are static config.
      smooth: whether finite differences are meaningful at sampled points (samplers keep
        inputs away from kinks; ops that are piecewise-linear are still smooth there).
      second_order: whether reverse-over-reverse is checked (the hand bwd is differentiable).
      primal: the forward outside differentiation (``None``: ``reference``); must compute the
        same function as ``reference``.
      jvp: hand-derived JVP ``(primals, tangents, **static) -> (out, tangent_out)``; every
        registered op has one (the registry tests fail otherwise). ``None`` only for ad-hoc ops.
    """

    name: str
    reference: Callable[..., Any]
    fwd: Callable[..., Any]
    bwd: Callable[..., Any]
    sample: Callable[..., Any]
    n_arrays: int
    validate: Callable[..., None] | None = None
    smooth: bool = True
    second_order: bool = True
    doc: str = ""
    primal: Callable[..., Any] | None = None
    jvp: Callable[..., Any] | None = None

    def __post_init__(self):
        params = list(inspect.signature(self.reference).parameters.values())
        object.__setattr__(self, "_signature", inspect.Signature(params))
        object.__setattr__(self, "_static_names", tuple(p.name for p in params[self.n_arrays :]))
        object.__setattr__(self, "_custom", self._build_custom_vjp())
        object.__setattr__(self, "_casts", {})

    # -- the public function -------------------------------------------------------------
    def _build_custom_vjp(self):
        """The custom_vjp; ``dtypes`` (static) are the primal arrays' dtypes, and each cotangent
        ``bwd`` returns is cast to its primal's dtype (JAX #18931: a cotangent must have its
        primal's dtype). So a ``bwd`` may return a parameter gradient in its accumulation dtype
        (float32 for half inputs, `funcbp.ops._precision`) and the cast happens here, once."""
        fwd, bwd = self.fwd, self.bwd
        primal = self.primal if self.primal is not None else self.reference

        @functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
        def custom(static, dtypes, *arrays):
            return primal(*arrays, **dict(static))

        def custom_fwd(static, dtypes, *arrays):
            return fwd(*arrays, **dict(static))

        def custom_bwd(static, dtypes, residuals, g):
            grads = tuple(bwd(residuals, g, **dict(static)))
            return tuple(_as_dtype(d, t) for d, t in zip(grads, dtypes, strict=True))

        custom.defvjp(custom_fwd, custom_bwd)
        return custom

    @functools.cached_property
    def _custom_jvp(self):
        """The `jax.custom_jvp` function built from ``jvp`` (once per op; static config goes
        through ``nondiff_argnums`` as for the custom_vjp)."""
        if self.jvp is None:
            raise NotImplementedError(
                f"{self.name}: no hand JVP (Op(..., jvp=...)), so it has no forward_mode"
            )
        jvp, reference = self.jvp, self.reference

        @functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
        def custom(static, *arrays):
            return reference(*arrays, **dict(static))

        def custom_jvp(static, primals, tangents):
            return jvp(tuple(primals), tuple(tangents), **dict(static))

        custom.defjvp(custom_jvp)
        return custom

    def split(self, args: tuple, kwargs: Mapping[str, Any]) -> tuple[tuple, tuple]:
        """Bind a call's arguments: ``(arrays, static)`` with defaults applied, static frozen.

        Raises ``TypeError`` naming the op for unknown or missing arguments.
        """
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}: {e} (signature {self.name}{self._signature})") from None
        bound.apply_defaults()
        values = list(bound.arguments.values())
        arrays = tuple(values[: self.n_arrays])
        static = tuple((k, _freeze(bound.arguments[k])) for k in self._static_names)
        return arrays, static

    def _checked(self, args, kwargs):
        arrays, static = self.split(args, kwargs)
        if self.validate is not None:
            self.validate(*arrays, **dict(static))
        return arrays, static

    def __call__(self, *args, **kwargs):
        """Hand path: the `jax.custom_vjp` function whose backward is ``bwd``."""
        arrays, static = self._checked(args, kwargs)
        return self._custom(static, tuple(getattr(a, "dtype", None) for a in arrays), *arrays)

    def hand(self, *args, **kwargs):
        """Same as calling the op: forward of the reference, backward by ``bwd``."""
        return self(*args, **kwargs)

    def autodiff(self, *args, **kwargs):
        """Autodiff path: the validated reference, differentiated by `jax.grad` itself."""
        arrays, static = self._checked(args, kwargs)
        return self.reference(*arrays, **dict(static))

    def forward_mode(self, *args, **kwargs):
        """Hand forward mode: the op as a `jax.custom_jvp` function whose JVP is ``jvp``.

        Validated like ``op(...)``. `jax.jvp`, `jax.jacfwd`, `jax.linearize` and `jax.hessian`
        work on it, and so does `jax.grad` (JAX transposes the linear rule; ``op(...)``, the
        custom_vjp, supports reverse mode only). Same forward values as the op.
        """
        arrays, static = self._checked(args, kwargs)
        return self._custom_jvp(static, *arrays)

    def path(self, source: str, *, remat: bool = False, mode: str = "reverse") -> Callable:
        """The op for one gradient source: ``"hand"`` (the custom VJP), ``"autodiff"`` (the
        validated reference, differentiated by `jax.grad` itself), ``"explicit"`` (``fwd``
        with its residuals dropped: the explicit engine's forward value) or ``"forward"``
        (`forward_mode`: the hand JVP; the same as ``"hand"`` with ``mode="forward"``).

        ``mode="reverse"`` (default): the hand path is the custom_vjp (``bwd``);
        ``mode="forward"``: the hand path is `forward_mode` (``jvp``), which JAX can also
        transpose to reverse mode. The autodiff path is the reference in both modes.
        ``remat=True``: the same, recomputing instead of saving — `remat` on the hand path,
        ``jax.checkpoint`` of the reference on the autodiff path (reverse mode only)."""
        if source not in ("hand", "autodiff", "explicit", "forward"):
            raise ValueError(
                f"{self.name}: source must be 'hand', 'autodiff', 'explicit' or 'forward', "
                f"got {source!r}"
            )
        if source == "forward":
            source, mode = "hand", "forward"
        if mode not in ("reverse", "forward"):
            raise ValueError(f"{self.name}: mode must be 'reverse' or 'forward', got {mode!r}")
        if mode == "forward":
            if remat:
                raise ValueError(
                    f"{self.name}: remat=True applies to mode='reverse' only (forward mode "
                    "keeps no residuals to recompute)"
                )
            return {"hand": self.forward_mode, "explicit": self.explicit}.get(source, self.autodiff)
        if source == "hand":
            return self.remat.hand if remat else self.hand
        if source == "explicit":
            return self.explicit
        if not remat:
            return self.autodiff

        def autodiff_remat(*args, **kwargs):
            arrays, static = self._checked(args, kwargs)
            return jax.checkpoint(functools.partial(self.reference, **dict(static)))(*arrays)

        return autodiff_remat

    def explicit(self, *args, **kwargs):
        """The validated ``fwd`` with its residuals dropped (no custom rule: what the explicit
        engine computes going forward)."""
        arrays, static = self._checked(args, kwargs)
        return self.fwd(*arrays, **dict(static))[0]

    @functools.cached_property
    def remat(self) -> Op:
        """This op with *recompute* instead of *save*: ``op.remat(...)`` has the same forward
        and the same gradients, but its forward keeps only its input arrays, and its backward
        re-runs ``fwd`` on them to rebuild the residuals just before ``bwd``.

        The per-op form of `jax.checkpoint`, for the hand path and the explicit engine alike
        (``nn.op_layer(..., remat=True)``; whole layers or segments of a model:
        `funcbp.nn.remat`). It pays where an op's residuals outweigh its inputs (the recurrent
        scans keep every step's gates; attention keeps its output besides q, k, v), or where
        its inputs are kept anyway by a neighbour; it costs one more forward of the op. An
        optimization barrier ties the recomputation to the incoming cotangent, so XLA cannot
        merge it with the forward (which would keep the residuals alive after all). Memory and
        time per op: ``python -m benchmarks.remat --ops``.
        """
        fwd, bwd = self.fwd, self.bwd

        def remat_fwd(*args, **static):
            out, _ = fwd(*args, **static)
            return out, tuple(args)

        def remat_bwd(arrays, g, **static):
            arrays, g = jax.lax.optimization_barrier((arrays, g))
            _, residuals = fwd(*arrays, **static)
            return bwd(residuals, g, **static)

        return dataclasses.replace(self, fwd=remat_fwd, bwd=remat_bwd, name=f"{self.name}.remat")

    def cast(self, dtype) -> Op:
        """This op computing in ``dtype`` (mixed precision; ``None``: the op itself).

        Its float arrays may come in any float dtype (float32 masters): each piece (reference,
        ``fwd``, primal, ``jvp``, validation) first casts them to ``dtype``, so the forward, its
        residuals and its output are in ``dtype``, and ``bwd`` runs on them unchanged. On the
        hand path the casts sit *inside* the custom_vjp: the cotangents ``bwd`` returns are cast
        to the primals' dtypes (a float32 master gets a float32 gradient, which a ``bwd``
        accumulates in float32 — `funcbp.ops._precision`), never rounded through ``dtype``. The
        autodiff path (``.autodiff``) differentiates the casts too: its parameter gradients are
        formed in ``dtype`` and only then converted, as a plain mixed-precision model's are.
        Cached per dtype: ``op.cast(d) is op.cast(d)``.
        """
        if dtype is None:
            return self
        dtype = jax.numpy.dtype(dtype)
        if dtype not in self._casts:
            self._casts[dtype] = _cast_op(self, dtype)
        return self._casts[dtype]

    def with_bwd(self, bwd: Callable[..., Any], name: str | None = None) -> Op:
        """A copy with another backward (used to plant bugs and prove the checker fails)."""
        return dataclasses.replace(self, bwd=bwd, name=name or self.name)

    def with_jvp(self, jvp: Callable[..., Any], name: str | None = None) -> Op:
        """A copy with another JVP (used to plant bugs in forward mode and prove the checks
        fail)."""
        return dataclasses.replace(self, jvp=jvp, name=name or self.name)

    def __repr__(self) -> str:
        return f"Op({self.name}{self._signature})"


def _as_dtype(cotangent, dtype):
    """``cotangent`` in ``dtype`` (``None`` and integer/key primals' entries pass through)."""
    if cotangent is None or dtype is None or getattr(cotangent, "dtype", dtype) == dtype:
        return cotangent
    if not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
        return cotangent
    return cotangent.astype(dtype)


def _cast_op(op: Op, dtype) -> Op:
    """`Op.cast`: every piece that takes the arrays casts the float ones to ``dtype`` first."""
    n = op.n_arrays

    def casting(fn):
        @functools.wraps(fn)  # keeps the signature: `Op.split` binds against it
        def wrapped(*args, **static):
            return fn(*cast_floats(args[:n], dtype), *args[n:], **static)

        return wrapped

    def jvp(primals, tangents, **static):
        return op.jvp(cast_floats(primals, dtype), cast_floats(tangents, dtype), **static)

    return dataclasses.replace(
        op,
        name=f"{op.name}.{dtype.name}",
        reference=casting(op.reference),
        fwd=casting(op.fwd),
        primal=None if op.primal is None else casting(op.primal),
        validate=None if op.validate is None else casting(op.validate),
        jvp=None if op.jvp is None else jvp,
    )


def register(op: Op) -> Op:
    """Add ``op`` to `REGISTRY` (names are unique) and return it; ``op(...)`` is the public fn.

    Every registered op must carry a hand ``jvp`` next to its ``bwd``: ``tests/test_jvp.py``
    fails for any that does not (``op.forward_mode`` raises ``NotImplementedError`` for it)."""
    if op.name in REGISTRY:
        raise ValueError(f"register: an op named {op.name!r} is already registered")
    object.__setattr__(op, "__doc__", op.doc or op.reference.__doc__)
    REGISTRY[op.name] = op
    return op
