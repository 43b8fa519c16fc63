"""The randomness a protocol machine uses, injected from outside (as Fernet takes its IV).

A running node passes `Randomness.from_os()`: secret bytes (SecAgg+ keys and mask seeds) from the
OS CSPRNG, and a fresh PCG64 for stochastic rounding and DP noise. Tests and simulations pass
`Randomness.seeded(seed)`, so a round, SecAgg+ included, replays exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Randomness:
    #: Secret bytes: keys and mask seeds.
    bytes: Callable[[int], bytes]
    #: Rounding and noise draws.
    numpy: np.random.Generator

    @classmethod
    def from_os(cls) -> Randomness:
        return cls(os.urandom, np.random.default_rng())

    @classmethod
    def seeded(cls, seed: int) -> Randomness:
        """Reproducible randomness: for tests and simulations only, never for a real node."""
        gen = np.random.default_rng(seed)
        return cls(gen.bytes, gen)
