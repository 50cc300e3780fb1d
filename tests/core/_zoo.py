"""The test zoo of backbones: a CNN, ViTs with a CLS token, registers and two prefix tokens, Swin (NHWC)
and torchvision's, each with its input size, expected layout and expected grid of the tapped map."""

from __future__ import annotations

import timm
import torchvision

# (builder, input size, expected layout, expected grid of the tapped map)
REPRESENTATIVE = {
    "timm-resnet (CNN)": (lambda: timm.create_model("resnet10t", num_classes=5), 64, "NCHW", (2, 2)),
    "timm-vit (CLS)": (lambda: timm.create_model("test_vit"), 160, "NLC", (10, 10)),
    "timm-vit2 (registers, no CLS)": (lambda: timm.create_model("test_vit2"), 160, "NLC", (10, 10)),
    "timm-deit-distilled (2 prefix)": (
        lambda: timm.create_model("deit_tiny_distilled_patch16_224", img_size=64, depth=2),
        64,
        "NLC",
        (4, 4),
    ),
    "timm-swin (NHWC)": (
        lambda: timm.create_model(
            "swin_tiny_patch4_window7_224", img_size=64, window_size=2, depths=(1, 1, 1, 1), embed_dim=24,
            num_heads=(1, 1, 1, 1),
        ),
        64,
        "NHWC",
        (2, 2),
    ),
    "tv-resnet18": (lambda: torchvision.models.resnet18(), 64, "NCHW", (2, 2)),
    "tv-vit_b_16": (
        lambda: torchvision.models.vit_b_16(image_size=64),
        64,
        "NLC",
        (4, 4),
    ),
    "tv-swin_t": (lambda: torchvision.models.swin_t(), 64, "NCHW", (2, 2)),
    "tv-convnext_tiny": (lambda: torchvision.models.convnext_tiny(), 64, "NCHW", (2, 2)),
    "tv-efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(), 64, "NCHW", (2, 2)),
}
