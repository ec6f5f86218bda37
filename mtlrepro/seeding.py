"""Independent random streams derived from one seed.

Every random choice of the pipeline (data generation, label noise, model
initialisation, shuffling, each weighting method) draws from its own stream,
seeded by hashing the user's seed with the stream's purpose. Adding or
removing one consumer therefore never shifts the numbers of another.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, purpose: str, bits: int = 63) -> int:
    """A deterministic ``bits``-bit seed for the stream ``purpose`` under ``seed`` (sha256-based)."""
    if not 1 <= bits <= 63:
        raise ValueError(f"bits must be between 1 and 63, got {bits}")
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - bits)
