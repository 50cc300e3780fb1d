"""Every error salfcbm raises.

Each class subclasses `SalfCBMError` *and* the builtin it refines, so
``except ValueError`` keeps working for callers who do not know salfcbm. Every
message says what was received, what was expected and how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "SalfCBMError",
    "LayerNotFoundError",
    "NonSpatialLayerError",
    "BatchMismatchError",
    "UnsupportedOutputError",
    "ConfigMismatchError",
    "WeightsFormatError",
    "ConceptNotFoundError",
    "ClassNotFoundError",
    "StoreMismatchError",
    "StoreCorruptError",
    "ScorerDatasetError",
    "MissingExtraError",
    "BackboneSpecError",
    "InputError",
    "LLMError",
    "UnsupportedBaselineError",
    "DatasetNotFoundError",
    "CorruptImageError",
    "ConfigError",
    "ChecksumError",
    "BackboneMismatchError",
    "ModelNotFoundError",
    "AllConceptsCutError",
    "SalfCBMWarning",
    "DegenerateResultWarning",
    "ImageInputError",
    "ImageTooLargeError",
    "TextFileError",
    "AlignmentError",
    "ImageConversionWarning",
    "DownloadError",
    "HubUnavailableError",
    "DiskSpaceError",
    "DryRunError",
    "RecipeRunError",
    "UnknownConceptSetError",
    "UnknownRecipeError",
    "NotATensorError",
    "closest",
]


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates closest to ``name`` (difflib ratio, then substring hits)."""
    candidates = list(candidates)
    hits = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if len(hits) < n:
        low = name.lower()
        for c in candidates:
            if low and low in c.lower() and c not in hits:
                hits.append(c)
            if len(hits) >= n:
                break
    return hits


class SalfCBMError(Exception):
    """Base class of every salfcbm error."""


class LayerNotFoundError(SalfCBMError, KeyError):
    """``layer=`` names no module of the backbone."""

    def __init__(self, layer: str, valid: Iterable[str]):
        valid = list(valid)
        near = closest(layer, valid)
        msg = f"The backbone has no module named {layer!r}."
        if near:
            msg += f" Closest module names: {', '.join(repr(v) for v in near)}."
        msg += (
            " Pass one of the names from `dict(backbone.named_modules())`, or leave `layer=None` "
            "to use the last spatial stage."
        )
        self.layer, self.suggestions = layer, near
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class NonSpatialLayerError(SalfCBMError, ValueError):
    """The chosen layer emits something that cannot be read as a spatial map."""


class BatchMismatchError(NonSpatialLayerError):
    """The tapped layer's output does not hold one entry per input image (e.g. TNT's inner pixel
    tokens, batch ``B x 196``), so its map cannot be read per image."""


class UnsupportedOutputError(SalfCBMError, TypeError):
    """A hooked module returned a type salfcbm cannot turn into a tensor map."""


class ConfigMismatchError(SalfCBMError, ValueError):
    """Saved weights do not fit the configuration (concept count, channels, classes)."""


class WeightsFormatError(SalfCBMError, ValueError):
    """A checkpoint is not in safetensors format (pickle files are refused)."""


class _UnknownName(SalfCBMError, KeyError):
    """A name that is not in a list the model knows; the message lists the closest ones."""

    kind, plural, where = "name", "names", "the list"

    def __init__(self, name: str, valid: Iterable[str]):
        near = closest(name, list(valid))
        msg = f"Unknown {self.kind} {name!r}."
        if near:
            msg += f" Closest {self.plural}: {', '.join(repr(v) for v in near)}."
        msg += f" Use a name from {self.where} or an integer index."
        self.name, self.suggestions = name, near
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ConceptNotFoundError(_UnknownName):
    """A concept name that is not in the model's concept list."""

    kind, plural, where = "concept", "concepts", "`model.concepts`"

    @property
    def concept(self) -> str:
        return self.name


class ClassNotFoundError(_UnknownName):
    """A class name that is not in ``model.class_names``."""

    kind, plural, where = "class", "class names", "`model.class_names`"


class StoreMismatchError(SalfCBMError, ValueError):
    """An existing store was computed with different settings than requested."""


class StoreCorruptError(SalfCBMError, OSError):
    """A store on disk is unreadable or inconsistent with its manifest."""


class ScorerDatasetError(SalfCBMError, ValueError):
    """A scorer that reads its data by index is bound to another dataset than the one being scored."""


class MissingExtraError(SalfCBMError, ImportError):
    """An optional dependency is missing; the message names the ``pip install``."""

    def __init__(self, package: str, extra: str, feature: str):
        super().__init__(
            f"{feature} needs the optional package {package!r}, which is not installed. "
            f"Install it with: pip install 'salfcbm[{extra}]'"
        )


class BackboneSpecError(SalfCBMError, ValueError):
    """A backbone spec cannot be built or inferred."""


class InputError(SalfCBMError, ValueError):
    """A tensor or argument of the wrong shape, type or value."""


class DatasetNotFoundError(SalfCBMError, FileNotFoundError):
    """A dataset path does not exist or is not laid out as the reader expects; the message shows the layout."""


class UnsupportedBaselineError(SalfCBMError, NotImplementedError):
    """A baseline cannot explain this model (e.g. LRP on a layer type it has no rule for)."""


class LLMError(SalfCBMError, RuntimeError):
    """The language-model endpoint failed or answered something unusable."""


class CorruptImageError(SalfCBMError, OSError):
    """An image file that cannot be read or decoded; the message names the file."""


class ConfigError(SalfCBMError, ValueError):
    """A model configuration (``config.json`` or constructor arguments) that breaks its schema."""


class ChecksumError(SalfCBMError, OSError):
    """A file's content does not match the checksum recorded when it was written (corrupt or mixed)."""


class BackboneMismatchError(ConfigMismatchError):
    """The backbone's weights are not the ones the model was saved with (fingerprint mismatch)."""


class ModelNotFoundError(SalfCBMError, FileNotFoundError):
    """``from_pretrained`` got a path that does not exist (or an invalid Hub repo id)."""


class AllConceptsCutError(SalfCBMError, ValueError):
    """Every concept fell below the interpretability cutoff: there is no bottleneck left to train a head on.

    ``similarities`` holds each concept's mean validation similarity, for choosing a cutoff.
    """

    def __init__(self, message: str, similarities: dict[str, float] | None = None):
        super().__init__(message)
        self.similarities = dict(similarities or {})


class SalfCBMWarning(UserWarning):
    """Base class of every warning salfcbm emits (filter them all with ``warnings.filterwarnings``)."""


class DegenerateResultWarning(SalfCBMWarning):
    """A result that is valid but useless: an empty or constant head, chance-level accuracy, a
    bottleneck that did not learn, an explanation with no contributing concept.

    Emitted together with a ``logging`` line of the ``"salfcbm"`` logger; ``fit`` also records it
    under ``metrics["degenerate"]`` in ``metrics.json``. Turn it into an error with
    ``warnings.simplefilter("error", DegenerateResultWarning)``.
    """


class ImageInputError(InputError):
    """Images salfcbm cannot read or trust: wrong layout or dtype, values out of range, NaN or
    inf pixels, an empty batch, a model on another device, a missing file."""


class ImageTooLargeError(ImageInputError):
    """An image whose pixel count or aspect ratio is over salfcbm's budget, refused before it is
    decoded or resized (the message names the limit and how to raise it)."""


class TextFileError(InputError):
    """A text file (a concept list) that is not UTF-8 text: binary, UTF-16 or undecodable; the message
    names the file and the line."""


class AlignmentError(SalfCBMError, ValueError):
    """The scorer and the backbone would see different regions of an image, so the prompt grid
    and the concept cells cannot be aligned."""


class ImageConversionWarning(SalfCBMWarning):
    """Images were converted on the way in (grayscale to RGB, RGBA without its alpha, other modes)."""

class DownloadError(SalfCBMError, OSError):
    """A file could not be downloaded (offline, or the server failed); the message says where to put it by hand."""


class HubUnavailableError(SalfCBMError, ConnectionError):
    """The Hugging Face Hub cannot be reached (offline mode, no network, a wrong ``HF_ENDPOINT``);
    the message says which and how to fix it."""


class DiskSpaceError(SalfCBMError, OSError):
    """A run would need more disk space than the target file system has free."""


class DryRunError(SalfCBMError, RuntimeError):
    """A dry run found the pipeline inconsistent (a resumed run or a reloaded model disagrees)."""


class RecipeRunError(SalfCBMError, RuntimeError):
    """A recipe's own method failed where the run records and skips a baseline (Table 2's SALF-CBM row)."""


class UnknownConceptSetError(_UnknownName):
    """A published concept-set name that salfcbm does not know (``load_concepts("lf-cbm:NAME")``)."""

    kind, plural, where = "concept set", "concept sets", "salfcbm.supervision.concept_sets.LF_CBM_CONCEPT_SETS"


class UnknownRecipeError(_UnknownName):
    """A recipe name that does not exist."""

    kind, plural, where = "recipe", "recipes", "`salfcbm reproduce --list`"


class NotATensorError(SalfCBMError, AttributeError, TypeError):
    """A `SALFCBMOutput` used where a tensor was expected (``out.shape``, ``torch.softmax(out)``,
    Captum or pytorch-grad-cam given the model itself).

    Both an ``AttributeError`` (so ``hasattr(out, "shape")`` stays ``False``) and a ``TypeError``
    (what torch raises for a wrong argument type); ``what`` names the misuse, ``fix`` replaces the
    standard advice where it does not apply (``torch.jit.script``).
    """

    def __init__(self, what: str, fix: str | None = None):
        self.what = what
        super().__init__(f"{what}: " + (fix or (
            "SALFCBMOutput is not a tensor; use out.logits or model.as_classifier() for tools that "
            "expect logits (Captum, pytorch-grad-cam, Quantus, torch.jit)."
        )))
