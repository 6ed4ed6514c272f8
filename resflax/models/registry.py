"""The model zoo as data: one table of named variants and the figures published for them.

Each entry holds the `ResNet` fields that define the variant, its native resolution and class
count, and the published parameter count and multiply-adds with their sources. The tests and
`make zoo` read this same table.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from resflax.models.resnet import ResNet

TV = "torchvision model card"
TIMM_P = "timm 1.0.31 `sum(p.numel())`"
TIMM_M = "timm results/benchmark-infer-amp-nchw-pt240-cu124-rtx3090.csv (infer_gmacs)"
CIFAR_ARITH = "exact: arithmetic in tests/models/test_counts.py"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    config: Mapping[str, Any]
    resolution: int
    params: int
    params_source: str
    gmacs: float | None = None
    gmacs_source: str = ""
    description: str = ""

    @property
    def num_classes(self) -> int:
        return self.config.get("num_classes", 1000)


_REGISTRY: dict[str, ModelEntry] = {}

STAGES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
CIFAR = {"stem": "cifar", "stem_width": 16, "widths": (16, 32, 64), "num_classes": 10}


def register(
    name: str,
    *,
    params: int,
    params_source: str,
    gmacs: float | None = None,
    gmacs_source: str = "",
    resolution: int = 224,
    description: str = "",
    **config: Any,
) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    fields = {f.name for f in dataclasses.fields(ResNet)} - {"parent", "name"}
    unknown = set(config) - fields
    if unknown:
        raise ValueError(f"{name}: unknown ResNet fields {sorted(unknown)}")
    _REGISTRY[name] = ModelEntry(
        name, MappingProxyType(dict(config)), resolution, params, params_source, gmacs,
        gmacs_source, description,
    )  # fmt: skip


def _imagenet_block(depth: int) -> str:
    return "basic" if depth < 50 else "bottleneck"


# --- ImageNet, v1.5 (stride on the 3x3): torchvision's and timm's ResNets --------------------
for depth, p, g in [
    (18, 11_689_512, 1.81),
    (34, 21_797_672, 3.66),
    (50, 25_557_032, 4.09),
    (101, 44_549_160, 7.80),
    (152, 60_192_808, 11.51),
]:
    register(
        f"resnet{depth}", stage_sizes=STAGES[depth], block=_imagenet_block(depth),
        params=p, params_source=TV, gmacs=g, gmacs_source=f"{TV} (GFLOPS)",
        description=f"ResNet-{depth} v1.5 (He et al. 2015; stride on the 3x3 as torchvision)",
    )  # fmt: skip
register(
    "resnet200", stage_sizes=STAGES[200], block="bottleneck",
    params=64_673_832, params_source=TIMM_P, gmacs=15.07, gmacs_source=TIMM_M,
    description="ResNet-200 v1.5 (He et al. 2016 depth, timm's resnet200)",
)  # fmt: skip

# --- ImageNet, v1 (stride on the first 1x1: the paper, Caffe and Keras) ----------------------
# Basic-block nets have no 1x1, so ResNet-18/34 v1 and v1.5 are the same network.
for depth, p, g in [(50, 25_557_032, 3.86), (101, 44_549_160, 7.58), (152, 60_192_808, 11.30)]:
    register(
        f"resnet{depth}_v1", stage_sizes=STAGES[depth], block="bottleneck", stride_on="1x1",
        params=p, params_source=f"{TV} (stride placement does not change the count)",
        gmacs=g,
        gmacs_source="Hu et al. 2018 (SENet) Table 2; He et al. 2015 Table 1 rounds to 2 figures",
        description=f"ResNet-{depth} v1 (He et al. 2015 Table 1; stride on the first 1x1)",
    )  # fmt: skip

# --- ImageNet, pre-activation v2 (He et al. 2016, "Identity Mappings"; timm's resnetv2_*) ---
for depth, p, g in [
    (18, 11_687_720, None),
    (34, 21_795_880, None),
    (50, 25_549_352, 4.11),
    (101, 44_541_480, 7.83),
    (152, 60_185_128, 11.55),
]:
    register(
        f"preact_resnet{depth}", stage_sizes=STAGES[depth], block=_imagenet_block(depth),
        preact=True, params=p, params_source=f"{TIMM_P} (resnetv2_{depth})",
        gmacs=g, gmacs_source=TIMM_M if g else "",
        description=f"Pre-activation ResNet-{depth} (He et al. 2016; timm resnetv2_{depth})",
    )  # fmt: skip
register(
    "preact_resnet200", stage_sizes=STAGES[200], block="bottleneck", preact=True,
    params=64_666_152,
    params_source="timm resnet200 count minus 7,680, the pre-activation change timm's "
    "resnetv2_50/101/152 show against resnet50/101/152 (timm has no resnetv2_200)",
    description="Pre-activation ResNet-200 (He et al. 2016 Table 5)",
)  # fmt: skip

# --- Bag-of-tricks tweaks (He et al. 2019): C = deep stem, D = deep stem + avg-pool shortcut --
register(
    "resnet50c", stage_sizes=STAGES[50], block="bottleneck", stem="deep", stem_width=32,
    params=25_576_264, params_source=TIMM_P, gmacs=4.35, gmacs_source=TIMM_M,
    description="ResNet-50-C: deep 3x3 stem (He et al. 2019)",
)  # fmt: skip
for depth, p, g in [(50, 25_576_264, 4.35), (101, 44_568_392, 8.08)]:
    register(
        f"resnet{depth}d", stage_sizes=STAGES[depth], block="bottleneck", stem="deep",
        stem_width=32, shortcut="D", params=p, params_source=TIMM_P, gmacs=g,
        gmacs_source=TIMM_M,
        description=f"ResNet-{depth}-D: deep stem + avg-pool downsampling shortcut",
    )  # fmt: skip

# --- Squeeze-and-excitation, ResNeXt, wide ---------------------------------------------------
register(
    "seresnet50", stage_sizes=STAGES[50], block="bottleneck", se_ratio=1 / 16,
    params=28_088_024, params_source=TIMM_P, gmacs=4.11, gmacs_source=TIMM_M,
    description="SE-ResNet-50 (Hu et al. 2018), v1.5 strides as timm's seresnet50",
)  # fmt: skip
for name, depth, groups, width, p, g in [
    ("resnext50_32x4d", 50, 32, 4, 25_028_904, 4.23),
    ("resnext101_32x8d", 101, 32, 8, 88_791_336, 16.41),
    ("resnext101_64x4d", 101, 64, 4, 83_455_272, 15.46),
]:
    register(
        name, stage_sizes=STAGES[depth], block="bottleneck", groups=groups, base_width=width,
        params=p, params_source=TV, gmacs=g, gmacs_source=f"{TV} (GFLOPS)",
        description=f"ResNeXt-{depth} {groups}x{width}d (Xie et al. 2017)",
    )  # fmt: skip
for depth, p, g in [(50, 68_883_240, 11.40), (101, 126_886_696, 22.75)]:
    register(
        f"wide_resnet{depth}_2", stage_sizes=STAGES[depth], block="bottleneck", base_width=128,
        params=p, params_source=TV, gmacs=g, gmacs_source=f"{TV} (GFLOPS)",
        description=f"Wide ResNet-{depth}-2: bottleneck inner width doubled",
    )  # fmt: skip

# --- CIFAR (He et al. 2015 §4.2): 6n+2 layers, 16/32/64 channels, option A shortcuts ---------
_LI2017 = "Li et al. 2017 (Pruning Filters for Efficient ConvNets) Table 1"
for depth, p, published, g in [
    (20, 269_722, "0.27M", None),
    (32, 464_154, "0.46M", None),
    (44, 658_586, "0.66M", None),
    (56, 853_018, "0.85M", 0.125),
    (110, 1_727_962, "1.7M", 0.253),
    (1202, 19_421_274, "19.4M", None),
]:
    n = (depth - 2) // 6
    register(
        f"resnet{depth}", stage_sizes=(n, n, n), block="basic", shortcut="A", resolution=32,
        params=p, params_source=f"He et al. 2015 Table 6 ({published}); {CIFAR_ARITH}",
        gmacs=g, gmacs_source=_LI2017 if g else "",
        description=f"CIFAR ResNet-{depth} (He et al. 2015 §4.2, option A)", **CIFAR,
    )  # fmt: skip

# --- CIFAR, pre-activation (He et al. 2016 Table 2/3) and wide (Zagoruyko & Komodakis 2016) --
for depth, block, p, published in [
    (110, "basic", 1_730_522, "1.7M"),
    (164, "bottleneck", 1_703_258, "1.7M"),
    (1001, "bottleneck", 10_327_706, "10.2M"),
]:
    n = (depth - 2) // (6 if block == "basic" else 9)
    register(
        f"preact_resnet{depth}", stage_sizes=(n, n, n), block=block, preact=True,
        resolution=32, params=p, params_source=f"He et al. 2016 ({published}); {CIFAR_ARITH}",
        description=f"CIFAR pre-activation ResNet-{depth} (He et al. 2016)", **CIFAR,
    )  # fmt: skip
register(
    "wrn28_10", stage_sizes=(4, 4, 4), block="basic", preact=True, stem="cifar",
    stem_width=16, widths=(160, 320, 640), num_classes=10, resolution=32,
    params=36_479_194, params_source=f"Zagoruyko & Komodakis 2016 Table 1 (36.5M); {CIFAR_ARITH}",
    description="Wide ResNet-28-10 (pre-activation basic blocks, width x10)",
)  # fmt: skip

# --- The blog post's sketch, made correct (see docs/zoo.md, "blog_resnet") ------------------
register(
    "blog_resnet", stage_sizes=(2, 2, 2, 2), block="basic", widths=(128, 256, 512, 1024),
    head_hidden=(2048, 1024), params=49_815_592,
    params_source="ours (no published figure); " + CIFAR_ARITH,
    description="The seed blog's ResNet: 7x7/2 stem (64), stages 128/256/512/1024, "
    "dense 2048 -> 1024 -> classes",
)  # fmt: skip


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a glob `pattern`, in registration order."""
    return [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)]


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if n.startswith(name.rstrip("0123456789")[:6])]
        hint = f"; similar: {', '.join(close[:8])}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (list_models() gives all)")
    return _REGISTRY[name]


def create_model(name: str, **overrides: Any) -> ResNet:
    """The named variant as a `ResNet`; any ResNet field can be overridden (num_classes=...,
    dtype="bfloat16", scan=True, axis_name="batch", ...)."""
    entry = get_entry(name)
    fields = {f.name for f in dataclasses.fields(ResNet)} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"create_model({name!r}): unknown override(s) {unknown}; valid: {sorted(fields)}"
        )
    return ResNet(**{**entry.config, **overrides})
