"""Tiny deterministic models shared by the reliability tests and their subprocesses."""

from __future__ import annotations

import torch
from torch import nn

import salfcbm

CONCEPTS = ["a wing", "a beak", "water", "a tree"]


def backbone(seed: int = 0) -> nn.Module:
    """A two-layer conv net: a custom backbone, so nothing is downloaded or rebuilt."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))


def model(variant: int = 0, net: nn.Module | None = None) -> salfcbm.SALFCBM:
    """A wrapped model with non-trivial adapter weights; ``variant`` picks the weights."""
    net = net if net is not None else backbone()
    m = salfcbm.wrap(net, concepts=CONCEPTS, num_classes=3, layer="2", input_size=(32, 32), grid=4)
    g = torch.Generator().manual_seed(100 + variant)
    with torch.no_grad():
        for p in (m.bottleneck.weight, m.head.weight, m.head.bias, m.concept_mean):  # the bottleneck has no bias
            p.copy_(torch.randn(p.shape, generator=g))
        m.concept_std.copy_(torch.rand(m.num_concepts, generator=g) + 0.5)
    return m.eval()


def probe() -> torch.Tensor:
    return torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)


def logits(m: salfcbm.SALFCBM) -> torch.Tensor:
    with torch.no_grad():
        return m(probe()).logits


# -- a deterministic scorer, data and a whole tiny run (for the store and fit tests) --------
class ColourScorer:
    """Mean colour per prompt cell as the 'embedding'; concepts are fixed random directions."""

    def __init__(self, slow: bool = False):
        self.slow = slow

    def fingerprint(self) -> dict:
        return {"scorer": "ColourScorer", "version": 1}

    def embed(self, images: torch.Tensor, indices: torch.Tensor, prompts) -> torch.Tensor:
        if self.slow:
            import time

            time.sleep(0.1)
        cells = torch.nn.functional.adaptive_avg_pool2d(images.float(), prompts.grid)  # (B, 3, Hg, Wg)
        emb = torch.cat([cells, torch.ones_like(cells[:, :1])], 1).permute(0, 2, 3, 1)
        return torch.nn.functional.normalize(emb, dim=-1)

    def text_embeddings(self, concepts) -> torch.Tensor:
        import hashlib

        rows = []
        for c in concepts:
            g = torch.Generator().manual_seed(int(hashlib.sha256(c.encode()).hexdigest()[:8], 16))
            rows.append(torch.randn(4, generator=g))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    def similarity(self, embeddings: torch.Tensor, concepts) -> torch.Tensor:
        return embeddings.float() @ self.text_embeddings(concepts).T


def images(n: int, size: int = 16) -> list:
    """``n`` (image, label) pairs: a coloured square on noise; the colour depends on the label."""
    g = torch.Generator().manual_seed(n)
    out = []
    for i in range(n):
        label = i % 3
        x = torch.rand(3, size, size, generator=g) * 0.3
        x[label, 4:12, 4:12] = 1.0
        out.append((x, label))
    return out


def run_stages(run, slow: bool = False):
    """Similarities, feature cache, bottleneck, head and save_pretrained of a tiny model in ``run``."""
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.training.pipeline import BottleneckConfig, HeadConfig, fit

    torch.manual_seed(0)
    m = model(0)
    return fit(m, images(16), images(8), scorer=ColourScorer(slow=slow), prompts=PromptGrid(grid=(4, 4), radius=3),
               run_dir=run, bottleneck=BottleneckConfig(batch_size=8, max_steps=30, val_every=10, cutoff=-1.0),
               head=HeadConfig(n_lambdas=4, max_iter=50), baseline=False, batch_size=4, shard_size=4,
               progress=False)


def artefacts(run) -> dict:
    """Every file a run writes that must be identical after a resume (not timings)."""
    from pathlib import Path

    run = Path(run)
    names = [*run.glob("similarities/*/shard_*"), *run.glob("features/*/shard_*"), run / "bottleneck.safetensors",
             run / "model" / "model.safetensors", run / "model" / "config.json"]
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(names)}
