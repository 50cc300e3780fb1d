"""The model's Hugging Face Hub methods: ``save_pretrained``, ``from_pretrained``, ``push_to_hub`` and the card.

`HubMethods` sits between `SALFCBMBase` and ``huggingface_hub.PyTorchModelHubMixin`` in the
model's bases: its methods replace the mixin's (so saving and loading are salfcbm's checked,
atomic ones, `salfcbm.core.persistence`) and hand over to it only for the upload.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from torch import nn

from salfcbm._utils.modes import preserved_modes
from salfcbm.core import persistence
from salfcbm.core.model_card import model_card

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import ModelCard

    from salfcbm.core.config import ModelConfig
    from salfcbm.core.model import SALFCBMBase

__all__ = ["HubMethods"]


class HubMethods:
    """Saving, loading and uploading a SALF-CBM (mixed into `SALFCBMBase`)."""

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights salfcbm saves: bottleneck, head and statistics (never the backbone)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def head_sparsity(self) -> dict[str, float]:
        """Non-zeros of the head: total, per class (NEC) and density."""
        w = self.head.weight.detach()
        nnz = int((w != 0).sum())
        return {"nnz": nnz, "nec": nnz / w.shape[0], "density": nnz / w.numel()}

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None, repo_id: str | None = None,
                        push_to_hub: bool = False, model_card_kwargs: dict | None = None,
                        save_backbone: bool | str = "auto", **push_to_hub_kwargs):
        """Save ``model.safetensors``, ``config.json`` and ``README.md`` to ``save_directory``, touching nothing else.

        ``save_backbone="auto"`` also saves the backbone's own weights as ``backbone.safetensors``
        when its spec cannot rebuild them (a random init, weights from a local file, a backbone
        trained with ``freeze_backbone=False``, your own module), so `from_pretrained` needs no
        ``backbone=``; the MB written are logged and stated on the model card. ``True`` always
        saves them, ``False`` never (then loading needs ``backbone=``).

        Only the files the save owns are written (the card only if absent or written by salfcbm
        and not edited since), each to a temporary file in the folder and moved over the old one
        atomically; your other files, subfolders, permissions and symlinks stay as they were. A
        full disk or a kill while writing leaves the previous model; a kill between the replaces
        is detected on load (`ChecksumError`) and the next save repairs it.
        ``config.json`` records a SHA-256 of the weights and the backbone's weights fingerprint
        (see `salfcbm.core.persistence`).
        """
        persistence.save_model(self, save_directory, save_backbone=save_backbone)
        if push_to_hub:
            return self.push_to_hub(repo_id=repo_id or Path(save_directory).name,
                                    model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path) -> None:
        persistence.save_model(self, save_directory)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the saved adapter to the Hub (`PyTorchModelHubMixin.push_to_hub`, same arguments).

        Offline (``HF_HUB_OFFLINE=1``) or without a network it raises `HubUnavailableError`
        naming the fix, not a connection error of the HTTP client.
        """
        from salfcbm._utils.hub import hub_call

        return hub_call("push_to_hub", super().push_to_hub, repo_id, **kwargs)

    def generate_model_card(self, *args, config: ModelConfig | None = None, **kwargs) -> ModelCard:
        """The model card (the class's Jinja template): backbone, layer, concepts, grid, head sparsity."""
        return model_card(self, config, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        backbone: nn.Module | None = None,
        verify: bool = True,
        verify_backbone: bool = True,
        trust_backbone_source: bool = False,
        map_location: str = "cpu",
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        **config_overrides: Any,
    ) -> SALFCBMBase:
        """Load a model saved with `save_pretrained` from a folder or a Hub repo.

        Everything is checked before it is used: ``config.json`` against the
        `ModelConfig` schema (backbone constructor arguments
        limited to `salfcbm.core.backbones.SAFE_KWARGS`), both files against the checksums
        recorded at save time (``verify``), the tensors (exactly the adapter's, finite floats,
        positive ``concept_std``), the backbone's channels at the layer (probed) and its
        weights fingerprint (``verify_backbone``). Your ``backbone`` is never modified.

        Args:
            pretrained_model_name_or_path: a folder written by `save_pretrained` or a Hub repo id.
            backbone: the backbone to use instead of rebuilding it from the saved spec. Without it, a saved
                ``backbone.safetensors`` (see `save_pretrained`) is loaded on the spec's architecture.
            verify: check the checksums of ``model.safetensors`` and ``config.json``.
            verify_backbone: refuse a backbone whose weights differ from the saved fingerprint.
            trust_backbone_source: follow a backbone name from ``config.json`` that is a location
                (timm's ``local-dir:PATH`` or ``hf-hub:REPO``); refused by default, since anyone can
                write (and re-sign) a file that points at any folder or repository.
            map_location: device the adapter's tensors are loaded to.
            force_download: Hub option.
            token: Hub option.
            cache_dir: Hub option.
            local_files_only: Hub option.
            revision: Hub option.
            **config_overrides: model config fields to override (e.g. ``layer=``, ``input_size=``).

        Raises:
            ModelNotFoundError: the path does not exist (and is no reachable Hub repo).
            ConfigError: ``config.json`` is not valid JSON, too large or deep, breaks the schema or names sizes
                beyond `salfcbm.core.config.CONFIG_LIMITS`.
            BackboneSpecError: the saved backbone name is a location and ``trust_backbone_source`` is off.
            ChecksumError: a file does not match the checksum recorded when it was saved.
            WeightsFormatError: not safetensors (or a header beyond the file), pickle files, backbone tensors,
                NaN/inf, wrong dtypes, non-finite outputs on a probe batch.
            BackboneMismatchError: the backbone's weights are not the saved ones.
            ConfigMismatchError: the weights do not fit the config or the backbone.
        """
        hub = dict(force_download=force_download, token=token, cache_dir=cache_dir,
                   local_files_only=local_files_only, revision=revision)
        model = persistence.load_model(cls, pretrained_model_name_or_path, backbone=backbone, verify=verify,
                                       verify_backbone=verify_backbone, map_location=map_location, hub_kwargs=hub,
                                       overrides=config_overrides,
                                       trust_backbone_source=trust_backbone_source)
        with preserved_modes(backbone):  # eval mode, as Hugging Face loads; your backbone keeps its own flags
            return model.eval()
