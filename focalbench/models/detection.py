"""Mask R-CNN / Faster R-CNN with FPN (torchvision's, unchanged) on a dense backbone: the paper's detection setting.

:class:`BackboneFPN` turns any :func:`~focalbench.models.factory.build_backbone` backbone (a list of NCHW maps with
``out_channels``, ``strides``, ``size_divisibility``) into the dict-of-levels module torchvision's detectors take;
:func:`build_mask_rcnn` puts RPN and RoI heads on it. torchvision's own ``BackboneWithFPN`` wraps its body in an
``IntermediateLayerGetter`` (named child modules run in order), which our backbones, with padding and per-stage norms
in ``forward``, do not fit; hence the small adapter.

Input / output (torchvision's convention): a list of 3xHxW float images in [0, 1], each of its own size; the
detector's ``GeneralizedRCNNTransform`` resizes them (shorter side ``min_size``, longer at most ``max_size``),
normalises with ``image_mean`` / ``image_std`` and zero-pads the batch to the backbone's ``size_divisibility``, so the
backbone's own padding is a no-op. Training takes one target dict per image: ``boxes`` (N, 4) float xyxy in pixels,
``labels`` (N,) int64 in 1..K (0 is the background), ``masks`` (N, H, W) uint8 for Mask R-CNN; N may be 0. It returns
the loss dict (``loss_classifier``, ``loss_box_reg``, ``loss_mask``, ``loss_objectness``, ``loss_rpn_box_reg``).
Evaluation returns per image ``boxes``, ``labels``, ``scores`` and (Mask R-CNN) ``masks`` (N, 1, H, W) probabilities,
in the input image's coordinates.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from difflib import get_close_matches
from inspect import Parameter, signature

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool

from focalbench.errors import ConfigError
from focalbench.models.contract import input_normalization


class BackboneFPN(nn.Module):
    """A multi-scale backbone followed by torchvision's :class:`FeaturePyramidNetwork`.

    ``forward(x)`` returns an ``OrderedDict`` with one ``out_channels``-wide map per backbone level, named
    ``"0"``, ``"1"`` … (finest first), plus ``"pool"`` from the ``LastLevelMaxPool`` extra block (stride 64 on a
    4/8/16/32 backbone). The backbone stays reachable, unchanged, as ``self.body``.

    Args:
        backbone: returns a list of NCHW maps; has ``out_channels`` (one per map) and ``strides``.
        out_channels: width of every FPN level (256 in the paper / mmdet / torchvision).
        extra_blocks: torchvision's extra levels; ``LastLevelMaxPool()`` when None.
        norm_layer: normalisation inside the FPN convolutions (None: plain convolutions, as mmdet's FPN).
    """

    def __init__(
        self,
        backbone: nn.Module,
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.body = backbone
        in_channels = list(backbone.out_channels)
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=in_channels,
            out_channels=out_channels,
            extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool(),
            norm_layer=norm_layer,
        )
        self.out_channels = out_channels
        self.featmap_names = [str(i) for i in range(len(in_channels))]  # the levels RoI pooling may use
        self.strides = list(backbone.strides)
        self.size_divisibility = int(backbone.size_divisibility)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict(zip(self.featmap_names, features)))


def build_mask_rcnn(
    backbone: nn.Module,
    num_classes: int,
    *,
    with_masks: bool = True,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    fpn_channels: int = 256,
    box_head_dim: int = 1024,
    mask_head_dim: int = 256,
    roi_sampling_ratio: int = 2,
    **kwargs,
) -> MaskRCNN | FasterRCNN:
    """Mask R-CNN (or, with ``with_masks=False``, box-only Faster R-CNN) with FPN on ``backbone``.

    Args:
        backbone: a :func:`~focalbench.models.factory.build_backbone` backbone (list of NCHW maps, ``out_channels``,
            ``strides``, ``size_divisibility``), or a :class:`BackboneFPN` already built around one.
        num_classes: number of classes INCLUDING the background, as torchvision counts them: object categories + 1.
            Target ``labels`` are 1..num_classes-1; 0 is the background and never appears in targets or outputs.
        with_masks: Mask R-CNN (boxes + masks, 14x14 mask RoI pooling) or Faster R-CNN (boxes only).
        min_size: shorter side after resizing; a sequence picks one at random per training image (multi-scale
            training) and uses the last one in evaluation.
        max_size: cap on the longer side after resizing.
        image_mean / image_std: normalisation applied by the detector to the [0, 1] input images; None takes the
            backbone's (:func:`~focalbench.models.contract.input_normalization`).
        fpn_channels: width of the FPN levels and of the RPN / RoI heads' input.
        box_head_dim / mask_head_dim: width of the box head's two fully connected layers (1024) and of the mask
            head's four 3x3 convolutions (256), as mmdet and torchvision; smaller for the CPU demo, where the mask
            head at 256 channels costs more than the whole tiny backbone.
        roi_sampling_ratio: RoIAlign's bilinear samples per bin side (torchvision's 2; 0 is adaptive,
            ``ceil(bin size)``, as mmdet and detectron2). On CPU, RoIAlign's backward runs on one core; 1 takes
            about a third less time than 2 there.
        **kwargs: any other ``MaskRCNN`` / ``FasterRCNN`` argument (``rpn_pre_nms_top_n_train``,
            ``box_detections_per_img``, ``rpn_anchor_generator`` …), overriding the defaults set here.

    Anchors (as torchvision's ``maskrcnn_resnet50_fpn``): one size per level, 8x the level's stride (32 … 256 on a
    4/8/16/32 backbone, 512 on the extra ``pool`` level), ratios 0.5 / 1 / 2. RoIAlign uses the backbone's levels
    (``"0"`` … ``"3"``), 7x7 for boxes and 14x14 for masks.
    """
    fpn = backbone if isinstance(backbone, BackboneFPN) else BackboneFPN(backbone, out_channels=fpn_channels)
    if image_mean is None or image_std is None:
        mean, std = input_normalization(fpn.body)
        image_mean = mean if image_mean is None else image_mean
        image_std = std if image_std is None else image_std
    names = fpn.featmap_names
    sizes = tuple((8 * s,) for s in fpn.strides) + ((16 * fpn.strides[-1],),)  # + the "pool" level at 2x stride
    defaults = {
        "rpn_anchor_generator": AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes)),
        "box_roi_pool": MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=roi_sampling_ratio),
        # The transform pads the batch to what the backbone needs, so feature maps line up with the anchors.
        "size_divisible": fpn.size_divisibility,
    }
    # The heads torchvision would build, at the widths asked for (its defaults: 1024 and 256).
    defaults["box_head"] = TwoMLPHead(fpn.out_channels * 7 * 7, box_head_dim)
    defaults["box_predictor"] = FastRCNNPredictor(box_head_dim, num_classes)
    if with_masks:
        defaults["mask_roi_pool"] = MultiScaleRoIAlign(
            featmap_names=names, output_size=14, sampling_ratio=roi_sampling_ratio
        )
        defaults["mask_head"] = MaskRCNNHeads(fpn.out_channels, [mask_head_dim] * 4, dilation=1)
        defaults["mask_predictor"] = MaskRCNNPredictor(mask_head_dim, mask_head_dim, num_classes)
    detector = MaskRCNN if with_masks else FasterRCNN
    _check_detector_arguments(detector, kwargs)
    return detector(
        fpn,
        num_classes=None,  # given to the predictors above
        min_size=tuple(min_size) if isinstance(min_size, Sequence) else min_size,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        **{**defaults, **kwargs},
    )


def _check_detector_arguments(detector: type, kwargs: dict) -> None:
    """torchvision's detectors hand unknown keywords to their transform, which ignores them: name a misspelt one."""
    known = [
        name
        for name, p in signature(detector.__init__).parameters.items()
        if p.kind not in (Parameter.VAR_KEYWORD, Parameter.VAR_POSITIONAL) and name not in ("self", "backbone")
    ] + ["size_divisible", "fixed_size"]  # the transform's own keywords
    for key in kwargs:
        if key not in known:
            close = get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of {sorted(known)}"
            raise ConfigError(f"model.detector_kwargs: '{key}' is not a {detector.__name__} argument{hint}")
