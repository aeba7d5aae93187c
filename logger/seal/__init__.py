"""Sealing a call record before it is stored: redact, measure, encrypt (`sealer`), in worker processes
(`pool`, whose forkserver preloads `worker`), behind a guard that keeps metadata when sealing fails or
stalls (`guard`). Callers import the public names from here; nothing here imports `worker`, which only
the workers load (its import reads the redaction lexicons).
"""

from __future__ import annotations

from minigate.logger.seal.guard import SealGuard, metadata_only
from minigate.logger.seal.pool import SealerPool
from minigate.logger.seal.sealer import Sealer, SealerRecipe

__all__ = ["SealGuard", "Sealer", "SealerPool", "SealerRecipe", "metadata_only"]
