"""Subprocess helper for tests/test_store.py: kill -9 resume and torchrun sharding.

Run as ``python tests/_dist_worker.py ROOT --length N --shard-size S [--delay SEC] [--kind generic|similarity]``,
optionally under ``python -m torch.distributed.run --nproc_per_node=K``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from salfcbm.supervision.prompts import PromptGrid  # noqa: E402
from salfcbm.supervision.store import ShardedStore, compute_similarity_store, compute_store  # noqa: E402


class ToyImages(torch.utils.data.Dataset):
    """Deterministic images: image n depends only on n."""

    def __init__(self, n: int, size: int = 16):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(int(i))
        return torch.rand(3, self.size, self.size, generator=g), i % 3, "extra"


def toy_fn(images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 2, 3): per-channel means and maxima, plus nothing random."""
    return torch.stack([images.mean(dim=(2, 3)), images.amax(dim=(2, 3))], dim=1) + indices.view(-1, 1, 1) * 0


class ToyScorer:
    """A deterministic ConceptScorer: embeddings = mean colour inside each ring + image mean."""

    embedding_dim = 6

    def fingerprint(self) -> dict:
        return {"scorer": "ToyScorer", "version": 1}

    def embed(self, images, indices, prompts):
        masks = prompts.ring_masks(*images.shape[-2:], device=images.device).float()  # (P, H, W)
        inside = torch.einsum("bchw,phw->bpc", images, masks) / masks.sum(dim=(1, 2)).clamp_min(1)[None, :, None]
        emb = torch.cat([inside, images.mean(dim=(2, 3))[:, None].expand(-1, inside.shape[1], -1)], dim=-1)
        return torch.nn.functional.normalize(emb, dim=-1).view(images.shape[0], *prompts.grid, -1)

    def text_embeddings(self, texts):
        out = torch.stack([torch.rand(6, generator=torch.Generator().manual_seed(sum(map(ord, t)))) for t in texts])
        return torch.nn.functional.normalize(out, dim=-1)

    def similarity(self, embeddings, concepts):
        return torch.nn.functional.normalize(embeddings.float(), dim=-1) @ self.text_embeddings(concepts).T


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--length", type=int, default=20)
    ap.add_argument("--shard-size", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--kind", choices=["generic", "similarity"], default="generic")
    args = ap.parse_args()
    torch.set_num_threads(1)

    rank = 0
    if "RANK" in os.environ:
        torch.distributed.init_process_group("gloo")
        rank = torch.distributed.get_rank()
    seen: list[int] = []

    dataset = ToyImages(args.length)
    if args.kind == "generic":

        def fn(images, indices):
            seen.extend(indices.tolist())
            if args.delay:
                time.sleep(args.delay)
            return toy_fn(images, indices)

        store = ShardedStore(args.root, manifest={"fn": "toy"}, item_shape=(2, 3), length=args.length, shard_size=args.shard_size)
        compute_store(store, dataset, fn, batch_size=args.batch_size, progress=False)
    else:
        scorer = ToyScorer()
        orig = scorer.embed

        def embed(images, indices, prompts):
            seen.extend(indices.tolist())
            return orig(images, indices, prompts)

        scorer.embed = embed
        compute_similarity_store(
            args.root, dataset, scorer, PromptGrid(grid=(2, 2), radius=4), shard_size=args.shard_size, batch_size=args.batch_size, progress=False
        )
    Path(args.root, f"seen_rank{rank}.json").write_text(json.dumps(sorted(set(seen))))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
