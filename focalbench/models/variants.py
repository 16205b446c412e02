"""Every FocalNet variant of the paper and the official code, with its pretrained sources and reference numbers.

Checked against timm's registry and the official configs. One deliberate difference from timm:
``focalnet_large_fl4`` sets ``normalize_modulator=True`` as the official config that trained the released weights
does (timm omits it; the flag has no parameters, so timm's large_fl4 silently computes a different function).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from focalbench.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """Architecture arguments of one variant plus what users look up about it."""

    name: str
    kwargs: dict
    num_classes: int = 1000
    input_size: int = 224
    crop_pct: float = 0.9
    timm_hub_id: str | None = None
    hf_hub_id: str | None = None
    paper: dict = field(default_factory=dict)  # params (M), GFLOPs, top-1 from the paper's table


_LARGE = dict(use_overlap_embed=True, layerscale_value=1e-4, use_post_norm=True)


def _variants() -> dict[str, Variant]:
    table: list[Variant] = []
    for size, dim, depths, paper in [
        ("tiny", 96, (2, 2, 6, 2), {"srf": (28.4, 4.4, 82.1), "lrf": (28.6, 4.5, 82.3)}),
        ("small", 96, (2, 2, 18, 2), {"srf": (49.9, 8.6, 83.4), "lrf": (50.3, 8.7, 83.5)}),
        ("base", 128, (2, 2, 18, 2), {"srf": (88.1, 15.3, 83.7), "lrf": (88.7, 15.4, 83.9)}),
    ]:
        for rf, levels in (("srf", 2), ("lrf", 3)):
            hf_suffix = "" if rf == "srf" else "-lrf"
            params, gflops, top1 = paper[rf]
            table.append(
                Variant(
                    f"focalnet_{size}_{rf}",
                    dict(embed_dim=dim, depths=depths, focal_levels=levels, focal_windows=3),
                    timm_hub_id=f"timm/focalnet_{size}_{rf}.ms_in1k",
                    hf_hub_id=f"microsoft/focalnet-{size}{hf_suffix}",
                    paper={"params_m": params, "gflops": gflops, "top1": top1},
                )
            )
    for size, dim, input_size, windows, extra in [
        ("large", 192, 384, {3: 5, 4: 3}, {}),
        ("xlarge", 256, 384, {3: 5, 4: 3}, {}),
        ("huge", 352, 224, {3: 3, 4: 3}, {"use_post_norm_in_modulation": True}),
    ]:
        for levels in (3, 4):
            kwargs = dict(embed_dim=dim, depths=(2, 2, 18, 2), focal_levels=levels, focal_windows=windows[levels])
            kwargs.update(_LARGE, **extra)
            if size == "large" and levels == 4:
                kwargs["normalize_modulator"] = True
            table.append(
                Variant(
                    f"focalnet_{size}_fl{levels}",
                    kwargs,
                    num_classes=21842,
                    input_size=input_size,
                    crop_pct=1.0,
                    timm_hub_id=f"timm/focalnet_{size}_fl{levels}.ms_in22k",
                    hf_hub_id=f"microsoft/focalnet-{size}-lrf-fl{levels}",
                )
            )
    # Isotropic models (official code): one stage of 12 blocks on 16×16 patches.
    for size, dim in (("tiny", 192), ("small", 384), ("base", 768)):
        kwargs = dict(embed_dim=dim, depths=(12,), patch_size=16, focal_levels=3, focal_windows=3)
        if size == "base":  # the released base_iso weights carry LayerScale, post-norm and modulation.ln
            kwargs.update(layerscale_value=1e-4, use_post_norm=True, use_post_norm_in_modulation=True)
        table.append(Variant(f"focalnet_{size}_iso", kwargs))
    return {v.name: v for v in table}


VARIANTS: dict[str, Variant] = _variants()


def get_variant(name: str) -> Variant:
    """The registered variant called ``name``; an unknown name lists the known ones and the closest match."""
    if name in VARIANTS:
        return VARIANTS[name]
    close = difflib.get_close_matches(name, VARIANTS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"Unknown FocalNet variant '{name}'.{hint} Known variants: {', '.join(VARIANTS)}")


def list_variants() -> list[str]:
    return list(VARIANTS)
