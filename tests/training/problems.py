"""Small bottleneck problems with a known answer, shared by the training tests (not a test module)."""

from __future__ import annotations

import torch

from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.store import ShardedStore, compute_similarity_store


class Table:
    """A dataset of indices and a scorer that returns a fixed table of similarities."""

    def __init__(self, table: torch.Tensor):  # (N, Hg, Wg, D)
        self.table = table

    def __len__(self):
        return self.table.shape[0]

    def __getitem__(self, i):
        return torch.zeros(3, 8, 8), 0

    def fingerprint(self):
        return {"scorer": "table", "sum": float(self.table.sum())}

    def embed(self, images, indices, prompts):
        return self.table[indices]

    def similarity(self, emb, concepts):
        return emb[..., [int(c[1:]) for c in concepts]]


def linear_problem(tmp_path, n, seed):
    """Features F (N, C, 3, 3) and targets P = A F for concepts c0..c2 (one fixed A), plus pure noise for c3."""
    a = torch.randn(3, 6, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, 6, 3, 3, generator=g)
    p = torch.einsum("mc,nchw->nmhw", a, feats)
    p = torch.cat([p, torch.randn(n, 1, 3, 3, generator=g)], 1)  # c3: unrelated to the features
    fstore = ShardedStore(tmp_path / f"f{seed}", manifest={"k": seed}, item_shape=(6, 3, 3), length=n,
                          shard_size=64, dtype=torch.float32)
    for i in fstore.missing_shards():
        a_, b_ = fstore.shard_range(i)
        fstore.write_shard(i, feats[a_:b_])
    table = Table(p.permute(0, 2, 3, 1).contiguous())
    sims = compute_similarity_store(tmp_path / f"s{seed}", table, table, PromptGrid(grid=(3, 3), radius=1),
                                    progress=False, dtype=torch.float32)
    return fstore, sims
