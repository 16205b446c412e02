"""The FocalNet block (section 3 of Yang et al., 2022): focal modulation in place of self-attention, then an MLP.

Both run on ``channels_last`` NCHW maps (see :mod:`focalbench.models.focalnet`): the per-token projections are the
autotuned 1×1 layers of :mod:`focalbench.models.pointwise`, the focal levels the depth-wise convolutions of
:mod:`focalbench.models.dwconv`; in eval mode without grad a block takes the fused oneDNN path of
:mod:`focalbench.models.fused`.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath
from timm.layers import LayerNorm2d as _LayerNorm2d
from torch import nn

from focalbench.models.dwconv import DepthwiseConv2d
from focalbench.models.fused import block_fused, fused_path_available, release_prepared_weights
from focalbench.models.layout import global_mean, split_channels
from focalbench.models.pointwise import PointwiseConv2d, PointwiseMlp


def LayerNorm2d(dim: int) -> nn.Module:  # noqa: N802 - a layer factory, named like the layer it builds
    """LayerNorm over C of an NCHW map, eps 1e-5 as the official code's ``nn.LayerNorm`` (timm's default is 1e-6)."""
    return _LayerNorm2d(dim, eps=1e-5)


class FocalModulation(nn.Module):
    """Focal modulation ``y = proj(q ⊙ h(Σ_l G^l ⊙ Z^l))`` for L focal levels.

    ``f`` projects x to the query q, the first context Z^0 and L+1 gates G; level l (1..L) is
    ``Z^l = GELU(DWConv_{k^l}(Z^{l-1}))`` with ``k^l = focal_factor·(l-1) + focal_window``; level L+1 is the global
    context ``GELU(avgpool(Z^L))``. The gated sum is divided by L+1 when ``normalize_modulator``; ``h`` (1×1) makes
    the modulator M, applied to q element-wise; ``ln`` is the optional post-norm inside the modulation (huge).
    """

    def __init__(
        self,
        dim: int,
        focal_level: int,
        focal_window: int,
        focal_factor: int = 2,
        normalize_modulator: bool = False,
        use_post_norm: bool = False,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.focal_level = focal_level
        self.normalize_modulator = normalize_modulator
        self.f = PointwiseConv2d(dim, 2 * dim + focal_level + 1)
        self.kernel_sizes = [focal_factor * level + focal_window for level in range(focal_level)]
        self.focal_layers = nn.ModuleList(nn.Sequential(DepthwiseConv2d(dim, k), nn.GELU()) for k in self.kernel_sizes)
        self.act = nn.GELU()
        self.h = PointwiseConv2d(dim, dim)
        self.ln = LayerNorm2d(dim) if use_post_norm else nn.Identity()
        self.proj = PointwiseConv2d(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, ctx, gates = split_channels(self.f(x), (self.dim, self.dim, self.focal_level + 1))
        ctx_all = None
        for level, focal_layer in enumerate(self.focal_layers):
            ctx = focal_layer(ctx)
            gate = gates[:, level : level + 1]
            # addcmul: one pass over memory per level where `+ ctx * gate` makes two and a temporary
            ctx_all = ctx * gate if ctx_all is None else torch.addcmul(ctx_all, ctx, gate)
        ctx_global = self.act(global_mean(ctx))
        gate = gates[:, self.focal_level :]
        ctx_all = ctx_global * gate if ctx_all is None else torch.addcmul(ctx_all, ctx_global, gate)  # None: L = 0
        if self.normalize_modulator:
            ctx_all = ctx_all / (self.focal_level + 1)
        modulator = self.h(ctx_all)
        return self.proj_drop(self.proj(self.ln(q * modulator)))


class FocalNetBlock(nn.Module):
    """Pre-norm block ``x + DropPath(γ₁·FM(LN(x)))``, ``x + DropPath(γ₂·MLP(LN(x)))``.

    With ``use_post_norm`` (large models) the same ``norm1``/``norm2`` move after the modulation / MLP, as in the
    official code; ``layerscale_value`` (None = off) adds the learnable γ₁, γ₂.
    """

    def __init__(
        self,
        dim: int,
        focal_level: int,
        focal_window: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layerscale_value: float | None = None,
        use_post_norm: bool = False,
        use_post_norm_in_modulation: bool = False,
        normalize_modulator: bool = False,
    ) -> None:
        super().__init__()
        self.use_post_norm = use_post_norm
        self.norm1 = LayerNorm2d(dim)
        self.modulation = FocalModulation(
            dim,
            focal_level=focal_level,
            focal_window=focal_window,
            normalize_modulator=normalize_modulator,
            use_post_norm=use_post_norm_in_modulation,
            proj_drop=drop,
        )
        self.norm2 = LayerNorm2d(dim)
        self.mlp = PointwiseMlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if layerscale_value is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layerscale_value)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layerscale_value)))
        else:
            self.gamma_1 = self.gamma_2 = None

    fused_inference = True  # see focalbench.models.fused; ``FocalNet.set_fused_inference(False)`` turns it off

    def train(self, mode: bool = True) -> FocalNetBlock:
        # The fused inference path's packed weights go stale when training moves the weights, and Lightning returns
        # to training by setting ``training`` (no train() call): each eval() starts from the weights as they are.
        release_prepared_weights(self)
        return super().train(mode)

    def _scaled(self, x: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
        return self.drop_path(x if gamma is None else gamma.view(1, -1, 1, 1) * x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_inference and fused_path_available(x, self):
            return block_fused(self, x)
        if self.use_post_norm:
            x = x + self._scaled(self.norm1(self.modulation(x)), self.gamma_1)
            return x + self._scaled(self.norm2(self.mlp(x)), self.gamma_2)
        x = x + self._scaled(self.modulation(self.norm1(x)), self.gamma_1)
        return x + self._scaled(self.mlp(self.norm2(x)), self.gamma_2)
