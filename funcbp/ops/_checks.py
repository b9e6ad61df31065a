"""Trace-time input checks shared by the ops: errors name the op, what came, what was expected.

Shapes and dtypes are static under `jax.jit`, so these run while tracing: bad input fails before
any compilation or training work is done. Values are not static; checks on values (labels in
range) run only when the array is concrete (`is_concrete`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "is_concrete",
    "require_array",
    "require_float",
    "require_int",
    "require_ndim",
    "require_same_dtype",
    "require_shape",
]


def _desc(x) -> str:
    return f"shape {tuple(jnp.shape(x))} dtype {jnp.result_type(x)}"


def require_array(op: str, name: str, x) -> None:
    """``x`` must be an array (or array-like with a dtype), not a list or a Python object."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{op}: {name} must be an array, got {type(x).__name__}")


def require_float(op: str, name: str, x) -> None:
    """``x`` must be a floating-point array."""
    require_array(op, name, x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{op}: {name} must be a floating-point array, got {_desc(x)}")


def require_int(op: str, name: str, x) -> None:
    """``x`` must be an integer array (labels, ids)."""
    require_array(op, name, x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{op}: {name} must be an integer array, got {_desc(x)}")


def require_ndim(op: str, name: str, x, ndim: int | tuple[int, ...], what: str = "") -> None:
    """``x.ndim`` must equal ``ndim`` (or, for a tuple ``(lo, None)``, be at least ``lo``)."""
    if isinstance(ndim, tuple):
        lo, hi = ndim
        ok = x.ndim >= lo and (hi is None or x.ndim <= hi)
        want = f"at least {lo}" if hi is None else f"{lo} to {hi}"
    else:
        ok, want = x.ndim == ndim, str(ndim)
    if not ok:
        extra = f" {what}" if what else ""
        raise ValueError(f"{op}: {name} must have {want} dims{extra}, got {_desc(x)}")


def require_shape(op: str, name: str, x, shape: tuple[int, ...], what: str = "") -> None:
    """``x.shape`` must equal ``shape``."""
    if tuple(x.shape) != tuple(shape):
        extra = f" ({what})" if what else ""
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}{extra}, got {_desc(x)}")


def require_same_dtype(op: str, **arrays) -> None:
    """All named arrays must share one dtype (no silent promotion inside a VJP)."""
    dtypes = {name: jnp.result_type(a) for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        got = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: arrays must share one dtype, got {got}")


def is_concrete(x) -> bool:
    """True when ``x``'s values are known now (not a tracer under jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def concrete_values(x) -> np.ndarray:
    """Values of a concrete array as NumPy (for value checks outside of tracing)."""
    return np.asarray(x)
