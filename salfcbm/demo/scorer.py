"""`GroundTruthScorer`: a stand-in for CLIP that reads the demo scenes' ground-truth masks.

A `ConceptScorer` (paper section 3.2) for `salfcbm.demo.SyntheticScenes`: for every red-circle
prompt location it returns the fraction of the circle's disc covered by each concept's
ground-truth mask. It is a stand-in for CLIP, *not* a model of it: it is exact where CLIP is
noisy, and it only knows the dataset's own concepts.

Examples:
    >>> from salfcbm.demo.dataset import SyntheticScenes
    >>> ds = SyntheticScenes(n=16, seed=0)
    >>> emb = GroundTruthScorer(ds).embed(ds[0][0][None], torch.tensor([0]), PromptGrid(radius=8))
    >>> emb.shape == (1, 7, 7, len(ds.concepts))
    True
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from salfcbm.demo.dataset import SyntheticScenes
from salfcbm.demo.world import GENERATOR_VERSION, SPLITS
from salfcbm.errors import AlignmentError, ConceptNotFoundError, InputError
from salfcbm.supervision.prompts import PromptGrid

__all__ = ["GroundTruthScorer", "disc_matrix"]


def disc_matrix(
    centres: torch.Tensor, radius: float, size: int
) -> torch.Tensor:
    """``(P, H * W)`` float: row p is the in-image part of disc p, normalised to sum 1."""
    c = centres.reshape(-1, 2).double()
    ys = torch.arange(size, dtype=torch.float64)
    dy2 = (ys[None, :] - c[:, :1]) ** 2  # (P, H)
    dx2 = (ys[None, :] - c[:, 1:]) ** 2  # (P, W)
    disc = (dy2[:, :, None] + dx2[:, None, :]) <= radius * radius  # (P, H, W)
    disc = disc.reshape(disc.shape[0], -1).float()
    area = disc.sum(1, keepdim=True).clamp_min(1.0)
    return disc / area


class GroundTruthScorer:
    """A stand-in for CLIP that reads `SyntheticScenes`' ground-truth masks.

    Implements the `ConceptScorer` protocol (paper 3.2). Where
    CLIP embeds each red-circle-prompted copy of an image and compares it to text
    embeddings, this scorer returns, for every prompt location, the fraction of the
    prompt circle's disc covered by each concept's ground-truth mask. The "embedding
    space" has one dimension per dataset concept (``D = len(dataset.concepts)``),
    `text_embeddings` are one-hot rows and `similarity` selects columns, so
    ``P[n, m, h, w]`` is exactly "how much of the circle at ``(h, w)`` shows concept m".

    **It is not CLIP.** It reads the masks of the dataset items named by ``indices``
    instead of looking at the images, it only knows the dataset's own concept phrases,
    and it is exact where CLIP is noisy and biased. Use it to test and benchmark the
    pipeline offline and to measure how well concept maps localise against a known
    truth; use a CLIP scorer for real data.

    The masks are in the dataset's pixels, so the images it is given must be the
    dataset's own (not resized or cropped): it checks them and raises
    `AlignmentError` otherwise (for ``fit``, wrap the backbone with
    ``input_size`` = the scene size and ``input_crop_pct=1.0``). The prompt radius is in
    `PromptGrid`'s one unit: the default ``PromptGrid()`` (7x7,
    r = 32 at 224 px) draws 9 px discs on a 64 px scene, the paper's proportion.

    Args:
        dataset: The dataset whose items the ``indices`` of `embed` refer to.
        resolution: Where the prompt centres are placed. ``None`` (the default): the grid
            of the dataset's image. An int (say ``224``, CLIP ViT-B/16's input) places
            them as a scorer with that input size would after resizing the image. The
            radius does not depend on it (see above).
        noise: Standard deviation of Gaussian noise added to the scores, seeded per item
            (the same item always gets the same noise). Default 0: clean.
        context: Weight of a global term, mimicking CLIP's use of context outside the
            circle: scores become ``(1 - context) * local + context * present`` where
            ``present`` is 1 if the concept appears anywhere in the image. Default 0.
        seed: Seed of the noise.
        class_template: Also score one class concept per class, ``template`` with ``{class}``
            replaced by the class name (the paper's Table 2 model is trained on "An image of a
            {class}"); its mask is the objects that meet the class rule's requirements.

    Examples:
        >>> ds = SyntheticScenes(n=8, image_size=64)
        >>> scorer = GroundTruthScorer(ds)
        >>> images = torch.stack([ds[i][0] for i in range(2)])
        >>> emb = scorer.embed(images, torch.tensor([0, 1]), PromptGrid(grid=(4, 4), radius=6))
        >>> emb.shape
        torch.Size([2, 4, 4, 16])
        >>> scorer.similarity(emb, ["a circle", "something blue"]).shape
        torch.Size([2, 4, 4, 2])
    """

    def __init__(
        self,
        dataset: SyntheticScenes,
        *,
        resolution: int | None = None,
        noise: float = 0.0,
        context: float = 0.0,
        seed: int = 0,
        class_template: str | None = None,
    ) -> None:
        if class_template is not None and (not isinstance(class_template, str) or "{class}" not in class_template):
            raise InputError(f"class_template must be a string containing '{{class}}'; got {class_template!r}.")
        if not isinstance(dataset, SyntheticScenes):
            raise InputError(
                f"GroundTruthScorer needs a SyntheticScenes dataset (it reads its masks); got {type(dataset).__name__}."
            )
        if resolution is not None and (not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1):
            raise InputError(f"resolution must be None or a positive int (pixels); got {resolution!r}.")
        if not isinstance(noise, (int, float)) or isinstance(noise, bool) or noise < 0:
            raise InputError(f"noise must be a float >= 0; got {noise!r}.")
        if not isinstance(context, (int, float)) or isinstance(context, bool) or not 0 <= context <= 1:
            raise InputError(f"context must be a float in [0, 1]; got {context!r}.")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise InputError(f"seed must be an int; got {seed!r}.")
        self.dataset = dataset
        self.resolution = resolution
        self.noise = float(noise)
        self.context = float(context)
        self.seed = seed
        self.class_template = class_template
        self.concepts: list[str] = list(dataset.concepts)
        if class_template is not None:  # Table 2's class concepts, "an image of a {class}"
            self.concepts += [class_template.replace("{class}", c) for c in dataset.classes]
        self._index = {c: k for k, c in enumerate(self.concepts)}

    @property
    def dim(self) -> int:
        """Embedding size ``D`` (the number of dataset concepts)."""
        return len(self.concepts)

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able identity of every score this scorer can produce (for store manifests)."""
        return {
            "scorer": "GroundTruthScorer",
            "version": GENERATOR_VERSION,
            "dataset": self.dataset.fingerprint(),
            "resolution": self.resolution,
            "radius_unit": "reference_size",  # PromptGrid's unit (before: dataset pixels)
            "noise": self.noise,
            "context": self.context,
            "seed": self.seed,
            "dim": self.dim,
            "class_template": self.class_template,
        }

    def embed_images(self, images: torch.Tensor, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Unprompted "embeddings" ``(B, D)``: 1 where a concept appears anywhere in the image, else 0.

        The stand-in for CLIP on the whole image, used by the "never fires" concept filter.
        """
        idx = torch.as_tensor(indices).reshape(-1)
        masks = torch.stack([torch.from_numpy(self._masks_np(int(i))) for i in idx])  # (B, K, H, W)
        return masks.flatten(2).any(-1).to(images.device, torch.float32)

    def for_dataset(self, dataset: SyntheticScenes) -> GroundTruthScorer:
        """The same scorer bound to ``dataset`` (its ``embed`` indices then refer to ``dataset``).

        `compute_similarity_store` calls it, so ``fit(scorer=GroundTruthScorer(train))``
        scores the validation images with the validation masks.
        """
        if dataset is self.dataset:
            return self
        if not isinstance(dataset, SyntheticScenes):
            raise InputError(
                f"GroundTruthScorer reads SyntheticScenes masks by index; it cannot score a {type(dataset).__name__}."
            )
        if list(dataset.concepts) != list(self.dataset.concepts) or dataset.classes != self.dataset.classes:
            raise InputError("GroundTruthScorer.for_dataset needs a dataset with the same concepts.")
        other = copy.copy(self)
        other.dataset = dataset
        return other

    def geometry(self, prompts: PromptGrid) -> tuple[torch.Tensor, float]:
        """Prompt centres ``(Hg, Wg, 2)`` (float, dataset pixels) and radius used by `embed`."""
        if not isinstance(prompts, PromptGrid):
            raise InputError(f"prompts must be a salfcbm.supervision.prompts.PromptGrid; got {type(prompts).__name__}.")
        size = self.dataset.image_size
        radius = float(prompts.radius_px(size, size))
        if self.resolution is None:
            return prompts.centres(size, size).double(), radius
        scale = size / self.resolution
        return prompts.centres(self.resolution, self.resolution).double() * scale, radius

    def embed(self, images: torch.Tensor, indices: torch.Tensor | Sequence[int], prompts: PromptGrid) -> torch.Tensor:
        """Disc coverage of every concept at every prompt location: ``(B, Hg, Wg, D)``.

        Args:
            images: ``(B, 3, H, W)`` the dataset's images at ``indices`` (checked, not read).
            indices: ``(B,)`` dataset indices of the images.
            prompts: The prompt grid.

        Returns:
            Float tensor in ``[0, 1]`` (before optional noise) on ``images``' device.

        Raises:
            AlignmentError: the images are not the dataset's own pixels (resized, cropped or
                other images), so the masks would not line up with them.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"images must be a (B, 3, H, W) tensor; got {shape}.")
        idx = torch.as_tensor(indices).reshape(-1)
        if idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise InputError(f"indices must be integers; got dtype {idx.dtype}.")
        if idx.numel() != images.shape[0]:
            raise InputError(
                f"indices must hold one dataset index per image; got {idx.numel()} indices for {images.shape[0]} images."
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self.dataset)):
            raise InputError(
                f"indices must lie in [0, {len(self.dataset)}) (the dataset's length); "
                f"got values from {int(idx.min())} to {int(idx.max())}."
            )
        centres, radius = self.geometry(prompts)
        hg, wg = prompts.grid
        size = self.dataset.image_size
        out_dtype = images.dtype if images.is_floating_point() else torch.float32
        if idx.numel() == 0:
            return torch.zeros(0, hg, wg, self.dim, device=images.device, dtype=out_dtype)
        discs = _cached_discs(tuple(centres.reshape(-1).tolist()), radius, size)  # (P, HW)
        masks = torch.stack([torch.from_numpy(self._masks_np(int(i), images[b])) for b, i in enumerate(idx)])
        m = masks.reshape(masks.shape[0], masks.shape[1], -1).float()
        local = m @ discs.T  # (B, K, P)
        if self.context > 0:
            present = (m.amax(dim=2, keepdim=True) > 0).float()
            local = (1 - self.context) * local + self.context * present
        if self.noise > 0:
            noise = torch.stack(
                [
                    torch.randn(local.shape[1:], generator=torch.Generator().manual_seed(self._noise_seed(int(i))))
                    for i in idx
                ]
            )
            local = local + self.noise * noise
        out = local.permute(0, 2, 1).reshape(-1, hg, wg, self.dim)
        return out.to(device=images.device, dtype=out_dtype)

    def _masks_np(self, i: int, image: torch.Tensor | None = None) -> np.ndarray:
        img, ids, lay = self.dataset.render(i)
        if image is not None:
            self._check_aligned(i, image, img)
        masks = self.dataset.masks_from(ids, lay)
        if self.class_template is None:
            return masks
        return np.concatenate([masks, self.dataset.class_object_masks(masks)])

    def _check_aligned(self, i: int, image: torch.Tensor, own: np.ndarray) -> None:
        if tuple(image.shape) != own.shape or float((image.detach().float().cpu() - torch.from_numpy(own)).abs().max()) > 0.05:
            raise AlignmentError(
                f"GroundTruthScorer got an image {tuple(image.shape)} for dataset item {i} that is not the dataset's "
                f"own {own.shape} image (resized, cropped or another item), so its masks cannot be aligned with it. "
                "Pass the dataset's images; for fit(), wrap the backbone with input_size=(S, S) for S = "
                f"{self.dataset.image_size} and input_crop_pct=1.0 so the model's view is the image itself."
            )

    def _noise_seed(self, i: int) -> int:
        ss = np.random.SeedSequence([self.seed, self.dataset.seed, SPLITS[self.dataset.split], i, 0x7E5])
        return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))

    def _column(self, concept: str | int) -> int:
        if isinstance(concept, (int, np.integer)) and not isinstance(concept, bool):
            if not -self.dim <= int(concept) < self.dim:
                raise InputError(f"Concept index {int(concept)} is out of range for {self.dim} concepts.")
            return int(concept) % self.dim
        if not isinstance(concept, str):
            raise InputError(f"Concepts must be strings (or int indices); got {type(concept).__name__}.")
        if concept not in self._index:
            raise ConceptNotFoundError(concept, self.concepts)
        return self._index[concept]

    def similarity(self, embeddings: torch.Tensor, concepts: Sequence[str]) -> torch.Tensor:
        """Select the named concepts' columns: ``(..., D)`` -> ``(..., M)``.

        Raises:
            ConceptNotFoundError: for a phrase that is not one of ``dataset.concepts``
                (this scorer cannot score free text; use a CLIP scorer for that).
        """
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim < 1 or embeddings.shape[-1] != self.dim:
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise InputError(f"embeddings must end with D = {self.dim} (one column per dataset concept); got {shape}.")
        if isinstance(concepts, str):
            raise InputError("concepts must be a sequence of phrases, not a single string; wrap it in a list.")
        cols = torch.tensor([self._column(c) for c in concepts], dtype=torch.long, device=embeddings.device)
        return embeddings.index_select(-1, cols)

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """One-hot rows ``(M, D)``: the embedding of a concept phrase is its column's unit vector."""
        if isinstance(texts, str):
            raise InputError("texts must be a sequence of phrases, not a single string; wrap it in a list.")
        cols = [self._column(t) for t in texts]
        out = torch.zeros(len(cols), self.dim)
        if cols:
            out[torch.arange(len(cols)), torch.tensor(cols)] = 1.0
        return out


@functools.lru_cache(maxsize=16)
def _cached_discs(centres: tuple[float, ...], radius: float, size: int) -> torch.Tensor:
    return disc_matrix(torch.tensor(centres, dtype=torch.float64).view(-1, 2), radius, size)
