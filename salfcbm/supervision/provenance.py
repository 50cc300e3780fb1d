"""What a store's shard was computed from (re-exported; the home is `salfcbm._utils.provenance`)."""

from salfcbm._utils.provenance import (
    INPUT_MODES,
    batch_digest,
    dataset_identity,
    files_digest,
    resolve_inputs,
    shard_digest,
)

__all__ = ["INPUT_MODES", "batch_digest", "dataset_identity", "files_digest", "resolve_inputs", "shard_digest"]
