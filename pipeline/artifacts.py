"""Names one step writes and another reads back: run artifact paths and run/version tag keys.

Steps share these through this module instead of importing each other for constants, so a
step can change without the steps that read its records importing it.
"""

from __future__ import annotations

# Run artifacts
RESOLVED_CONFIG = "config/resolved_config.yaml"
"""The validated config a run trained with: what `reproduce` re-trains from."""
TRAINING_ROWS = "split/training_rows.npz"
"""Fingerprints of the training rows: the gate scores a champion only on rows it never saw."""
REFERENCE_PROFILE_PATH = "monitoring/reference_profile.json"
"""What monitoring compares production traffic with."""

# Lineage tags of a training run (data.hash is also tagged on the registered version)
DATA_HASH = "data.hash"
CONFIG_NAME = "config.name"
CONFIG_DIR = "config.dir"
CODE_HASH = "code.hash"
GIT_COMMIT = "git.commit"
GIT_DIRTY = "git.dirty"
LIBRARIES = "lineage.libraries"
CACHE_KEY = "cache.key"
POSITIVE_CLASS = "data.positive_class"
"""The class binary metrics and the decision threshold are about."""
IMBALANCE_WARNING = "data.imbalance_warning"
"""Set when the gate metric (accuracy) says little about a rare class; the card shows it."""

# Tags of a reproduction run
REPRODUCE_OF_RUN = "reproduce.of_run"

# Gate tags on a registered version
GATE_DECISION = "gate.decision"
