"""The model card a save writes (``README.md``): the Jinja template and its fields.

The card states the backbone (name, weights, fingerprint), the tapped layer, the concepts, the grid,
the pooling, the head's sparsity and the metrics `salfcbm.fit` recorded; `salfcbm.core.persistence`
signs it so that a later save overwrites only a card salfcbm wrote.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import ModelCard

    from salfcbm.core.config import ModelConfig
    from salfcbm.core.model import SALFCBMBase

__all__ = ["MODEL_CARD_TEMPLATE", "model_card"]

MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# SALF-CBM on {{ backbone_name }}

A spatially-aware, label-free concept bottleneck model ([paper]({{ paper_url }})),
built with [salfcbm]({{ repo_url }}). It explains each prediction by the concepts
that drove it and shows where each concept is in the image.

| | |
|---|---|
| Backbone | `{{ backbone_name }}` (weights: `{{ backbone_weights }}`, fingerprint `{{ fingerprint }}`) |
| Tapped layer | `{{ layer }}` ({{ layout }}, {{ channels }} channels) |
| Concepts | {{ concepts | length }} |
| Prompting grid | {{ grid[0] }} x {{ grid[1] }} |
| Pooling | {{ pooling }} |
| Classes | {{ num_classes }} |
| Head non-zeros | {{ nnz }} ({{ '%.2f' % nec }} per class, density {{ '%.3f' % density }}) |
{% for k, v in head_stats.items() %}| {{ k }} | {{ v }} |
{% endfor %}
{{ backbone_note }}

```python
import salfcbm
{{ load_snippet }}
explanation = model.explain(images, top_k=5)
```

## Concepts

{% for c in concepts[:50] %}- {{ c }}
{% endfor %}{% if concepts | length > 50 %}- ... and {{ concepts | length - 50 }} more (see config.json)
{% endif %}"""



def model_card(model: SALFCBMBase, config: ModelConfig | None = None, **kwargs: Any) -> ModelCard:
    """The card of ``model`` (``config``: the config being saved; default the model's own, as a save would)."""
    from huggingface_hub import ModelCard, ModelCardData

    from salfcbm.core.backbone_weights import card_fields, wants_saving

    cfg = config or model.config.replace(backbone=model.backbone_spec)
    spec, info = cfg.backbone, model._hub_mixin_info
    saved = None if config is not None else wants_saving("auto", spec, frozen=cfg.freeze_backbone)  # as a save would
    kwargs = {**card_fields(cfg, model.backbone, saved=saved), **kwargs}
    data = ModelCardData(library_name="salfcbm", tags=list(info.model_card_data.tags or []))
    return ModelCard.from_template(
        card_data=data, template_str=info.model_card_template, repo_url=info.repo_url, paper_url=info.paper_url,
        backbone_name=f"{spec['source']}:{spec['name']}", backbone_weights=spec["weights"],
        fingerprint=cfg.backbone_fingerprint, layer=cfg.layer, layout=cfg.layout, channels=cfg.feature_channels,
        concepts=cfg.concepts, grid=cfg.grid, pooling=cfg.pooling, num_classes=cfg.num_classes,
        head_stats=cfg.head_stats or {}, **model.head_sparsity(), **kwargs,
    )
