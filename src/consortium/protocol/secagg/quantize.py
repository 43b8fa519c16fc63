"""Fixed-point encoding of float updates into Z_{2**32}, the ring SecAgg+ sums in.

An update x (float vector) is clipped to L2 norm C, scaled by s and stochastically rounded:
q_i = floor(s x_i) + Bernoulli(frac(s x_i)), so E[q_i] = s x_i (unbiased) and |q_i - s x_i| < 1.
Negative integers are stored in two's complement, so the modular sum of the words, read back as
int32, is the exact integer sum as long as it does not wrap.

Bound that keeps the sum from wrapping: since |x_i| <= ||x||_2 <= C, every word satisfies
|q_i| <= ceil(C s) <= C s + 1, and the sum of n updates is in (-2**31, 2**31) when

    n * (C * s + 1) < 2**31.

`SecAggParams` checks this at construction and refuses parameters that break it. Dequantizing
the sum divides by s; its error against the float sum of the clipped updates is below n / s per
coordinate (each rounding moves a word by less than 1).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from consortium.protocol.secagg.errors import SecAggError, SecAggParamsError

MODULUS_BITS = 32


def max_word(clip: float, scale: float) -> int:
    """Largest |q_i| a clipped, rounded update can hold."""
    return int(np.ceil(clip * scale))


def check_no_wrap(n: int, clip: float, scale: float) -> None:
    """Raise unless the sum of `n` quantized updates stays inside int32 (see module docstring)."""
    if not (clip > 0 and scale > 0 and np.isfinite(clip) and np.isfinite(scale)):
        raise SecAggParamsError("clip bound and quantization scale must be positive and finite")
    worst = n * (clip * scale + 1)
    if worst >= 2**31:
        raise SecAggParamsError(
            f"the sum of {n} updates could wrap mod 2**32: n * (clip * scale + 1) = {worst:.4g} "
            f"must be < 2**31; lower the scale (now {scale}) or the clip bound (now {clip})"
        )


def clip_l2(x: npt.ArrayLike, clip: float) -> npt.NDArray[np.float64]:
    """`x` scaled down (never up) to L2 norm at most `clip`."""
    v = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(v)):
        raise SecAggError("update contains NaN or infinity")
    norm = float(np.linalg.norm(v))
    return v * (clip / norm) if norm > clip else v


def quantize(
    x: npt.ArrayLike, clip: float, scale: float, rng: np.random.Generator
) -> npt.NDArray[np.uint32]:
    """Clip to L2 norm `clip`, stochastically round `x * scale`, return words mod 2**32."""
    scaled = clip_l2(x, clip) * scale
    low = np.floor(scaled)
    q = low + (rng.random(scaled.shape) < (scaled - low))
    # |q| <= ceil(clip * scale) < 2**31, so the int64 -> uint32 cast is exact mod 2**32.
    return q.astype(np.int64).astype(np.uint32)


def dequantize(words: npt.NDArray[np.uint32], scale: float) -> npt.NDArray[np.float64]:
    """Read words (a single update or a non-wrapping sum) as signed ints and undo the scale."""
    return np.asarray(words, dtype=np.uint32).view(np.int32).astype(np.float64) / scale
