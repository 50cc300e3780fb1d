# Stand-ins so that this page runs anywhere, offline, in seconds; skip this block with your own data.
# It writes a small image folder (procedural scenes, one sub-folder per class), a concept list,
# and a tiny random CLIP (a config and seeded random weights, so that every process, Python or
# CLI, loads the same CLIP and a rerun finds its similarity store). With real data, use your own
# folders, a pretrained backbone and CLIP: CLIPScorer("ViT-B-16", pretrained="openai").
import json
import os

import open_clip
import torch
from safetensors.torch import save_file
from torchvision.utils import save_image

from salfcbm.demo.scenes import SyntheticScenes

for split, n in (("train", 32), ("val", 16), ("test", 8)):
    scenes = SyntheticScenes(n=n, split=split, image_size=64, num_classes=2)
    for i in range(n):
        image, label = scenes[i]
        os.makedirs(f"my_images/{split}/{scenes.classes[label]}", exist_ok=True)
        save_image(image, f"my_images/{split}/{scenes.classes[label]}/{i:03d}.png")
with open("my_concepts.txt", "w") as f:
    f.write("\n".join(scenes.concepts) + "\n")
os.makedirs("tiny-clip", exist_ok=True)
with open("tiny-clip/open_clip_config.json", "w") as f:
    json.dump({"model_cfg": {"embed_dim": 32,
                             "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
                             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                          "layers": 1}},
               "preprocess_cfg": {}}, f)
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(0)  # the same random weights in every process
    clip = open_clip.create_model("local-dir:tiny-clip")
save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, "tiny-clip/open_clip_model.safetensors")
