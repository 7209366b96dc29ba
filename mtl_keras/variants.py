"""The size tables `--variant` names and their parsers, for the trunks that come in sizes (vit, cct).

Imports no Keras: the flag checks (flags.py) answer a bad `--variant` in one line before any backend loads, and
a process group's supervising process never loads one. The trunks (models/vit.py, models/cct.py) build from
these same tables, and the model builder checks `--variant` and `--stem_init` with `check` and `WHITENABLE`.
"""

from __future__ import annotations

import re

# ViT "NAME/PATCH" (big_vision style): name -> (width, depth, mlp_dim, heads)
VIT: dict[str, tuple[int, int, int, int]] = {
    "Pico": (32, 2, 64, 2),  # tests and smoke runs
    "Mu": (64, 3, 128, 4),  # the quick start
    "Mi": (96, 4, 192, 3),  # CPU-sized CIFAR steps between Mu and Ti (the CIFAR-10 scaling study)
    "XS": (128, 6, 256, 4),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
}

# CCT "LAYERS/KxN" (Hassani et al. 2021): layers name -> (depth, width, heads, mlp_ratio). "Pico" is for tests;
# the rest are the paper's sizes.
CCT: dict[str, tuple[int, int, int, int]] = {
    "Pico": (2, 32, 2, 1),
    "2": (2, 128, 2, 1),
    "4": (4, 128, 2, 1),
    "6": (6, 256, 4, 2),
    "7": (7, 256, 4, 2),
    "14": (14, 384, 6, 3),
}


def parse_vit(variant: str) -> tuple[int, int, int, int, int]:
    """Decodes "NAME/PATCH" into (width, depth, mlp_dim, heads, patch)."""
    name, _, patch = variant.partition("/")
    if name not in VIT or not patch.isdigit() or int(patch) < 1:
        raise ValueError(f"unknown ViT variant {variant!r}: use NAME/PATCH with NAME in {sorted(VIT)}, e.g. 'Mu/4'")
    return (*VIT[name], int(patch))


def parse_cct(variant: str) -> tuple[int, int, int, int, int, int]:
    """Decodes "LAYERS/KxN" into (depth, width, heads, mlp_ratio, kernel, conv_layers)."""
    m = re.fullmatch(r"(\w+)/(\d+)x(\d+)", variant)
    if not m or m[1] not in CCT or int(m[2]) < 1 or int(m[3]) < 1:
        raise ValueError(f"unknown CCT variant {variant!r}: use LAYERS/KxN with LAYERS in "
                         f"{list(CCT)}, e.g. '7/3x1' (kernel 3, one tokenizer conv)")
    return (*CCT[m[1]], int(m[2]), int(m[3]))


# Trunk -> the parser of its `--variant`; a trunk not listed has fixed shapes and ignores the flag.
PARSERS = {"vit": parse_vit, "cct": parse_cct}
# Trunks whose first layer is a convolution on the images, which --stem_init=whitened sets from training patches.
WHITENABLE = ("vit", "cct")


def check(trunk: str, variant: str) -> None:
    """Raises ValueError (one line) when `variant` is not a size of `trunk`; fixed-shape trunks take any."""
    parse = PARSERS.get(trunk)
    if parse is not None:
        parse(variant)
