"""Mask R-CNN / Faster R-CNN + FPN on our backbones: loss dict and gradients in training, detections in the input's
coordinates in evaluation, images without objects, the box-only variant. Tiny backbones, 64 px, few proposals."""

import math

import pytest
import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.ops import roi_align

from focalbench.models import build_backbone
from focalbench.models.detection import BackboneFPN, build_mask_rcnn

NUM_CLASSES = 3  # two object categories + background
MASK_LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
# Few proposals and sampled RoIs: the tests check wiring, not quality.
FAST = {
    "rpn_pre_nms_top_n_train": 64,
    "rpn_post_nms_top_n_train": 32,
    "rpn_pre_nms_top_n_test": 64,
    "rpn_post_nms_top_n_test": 32,
    "rpn_batch_size_per_image": 32,
    "box_batch_size_per_image": 32,
    "box_detections_per_img": 10,
}
BACKBONES = {
    "focalnet": lambda: build_backbone("focalnet_tiny_srf", embed_dim=8, depths=(1, 1, 1, 1), focal_windows=9),
    "resnet18": lambda: build_backbone("resnet18", out_indices=(1, 2, 3, 4)),
}


def detector(backbone: str = "focalnet", **kwargs):
    torch.manual_seed(0)
    return build_mask_rcnn(BACKBONES[backbone](), NUM_CLASSES, **{"min_size": 64, "max_size": 64, **FAST, **kwargs})


def target(height: int, width: int, boxes: list[list[float]], labels: list[int]) -> dict:
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[int(y0) : int(y1), int(x0) : int(x1)] = 1
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks,
    }


def batch() -> tuple[list[torch.Tensor], list[dict]]:
    images = [torch.rand(3, 64, 64), torch.rand(3, 50, 70)]
    targets = [target(64, 64, [[4, 6, 40, 50], [30, 20, 60, 60]], [1, 2]), target(50, 70, [[10, 5, 66, 45]], [2])]
    return images, targets


def test_fpn_adapter_levels(one_thread):
    backbone = BACKBONES["focalnet"]()
    fpn = BackboneFPN(backbone)
    assert fpn.body is backbone and fpn.out_channels == 256 and fpn.size_divisibility == 32
    out = fpn(torch.randn(1, 3, 64, 96))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    shapes = [(1, 256, -(-64 // s), -(-96 // s)) for s in (4, 8, 16, 32, 64)]  # "pool": stride 2 on 2x3 gives 1x2
    assert [tuple(f.shape) for f in out.values()] == shapes


def test_configuration(one_thread):
    model = detector()
    assert isinstance(model, MaskRCNN)
    assert model.transform.size_divisible == 32
    assert model.transform.image_mean == pytest.approx([0.485, 0.456, 0.406])
    assert model.roi_heads.box_predictor.cls_score.out_features == NUM_CLASSES
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == NUM_CLASSES
    assert model.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    assert model.roi_heads.mask_roi_pool.output_size == (14, 14)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_train_losses_and_gradients(name, one_thread):
    model = detector(name).train()
    images, targets = batch()
    losses = model(images, targets)
    assert set(losses) == MASK_LOSSES
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    stem = next(p for p in model.backbone.body.parameters() if p.requires_grad)
    assert stem.grad is not None and stem.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(BACKBONES))
def test_eval_detections_in_input_coordinates(name, one_thread):
    model = detector(name).eval()
    images, _ = batch()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for det, image in zip(detections, images):
        height, width = image.shape[1:]
        n = len(det["boxes"])
        assert det["boxes"].shape == (n, 4) and det["labels"].shape == (n,) and det["scores"].shape == (n,)
        assert det["masks"].shape == (n, 1, height, width)
        assert n <= FAST["box_detections_per_img"]
        if n:
            # Mapped back from the resized image: within the input, up to rounding.
            assert det["boxes"].min() >= 0
            assert det["boxes"][:, 0::2].max() <= width + 1e-3 and det["boxes"][:, 1::2].max() <= height + 1e-3
            assert det["labels"].min() >= 1 and det["labels"].max() < NUM_CLASSES


def test_image_without_objects_trains(one_thread):
    model = detector().train()
    images, targets = batch()
    targets[1] = target(50, 70, [], [])
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["masks"].shape == (0, 50, 70)
    losses = model(images, targets)
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    # A batch of only empty images: the RoI losses have nothing positive and must still be finite.
    losses = model(images[1:], targets[1:])
    assert all(math.isfinite(v.item()) for v in losses.values())


def test_faster_rcnn_without_masks(one_thread):
    model = detector(with_masks=False).train()
    assert isinstance(model, FasterRCNN) and not isinstance(model, MaskRCNN)
    images, targets = batch()
    targets = [{k: t[k] for k in ("boxes", "labels")} for t in targets]
    losses = model(images, targets)
    assert set(losses) == MASK_LOSSES - {"loss_mask"}
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert all("masks" not in d for d in detections)


def test_kwargs_override_defaults_and_multiscale(one_thread):
    model = detector(min_size=(48, 64), box_detections_per_img=5, image_mean=(0.5, 0.5, 0.5), image_std=(1, 1, 1))
    assert model.transform.min_size == (48, 64)
    assert model.roi_heads.detections_per_img == 5
    assert model.transform.image_mean == [0.5, 0.5, 0.5]


def test_head_widths_default_to_torchvisions_and_can_shrink(one_thread):
    default = detector()
    reference = MaskRCNN(BackboneFPN(BACKBONES["focalnet"]()), NUM_CLASSES)  # torchvision's own heads
    for name in ("box_head", "box_predictor", "mask_head", "mask_predictor"):
        ours, theirs = getattr(default.roi_heads, name), getattr(reference.roi_heads, name)
        assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()], name
    narrow = detector(box_head_dim=64, mask_head_dim=16).train()
    assert narrow.roi_heads.box_head.fc7.out_features == 64
    assert narrow.roi_heads.mask_predictor.mask_fcn_logits.in_channels == 16
    assert narrow.roi_heads.box_predictor.cls_score.out_features == NUM_CLASSES
    losses = narrow(*batch())
    assert set(losses) == MASK_LOSSES and all(torch.isfinite(v) for v in losses.values())


def test_roi_sampling_ratio_reaches_both_poolers(one_thread):
    assert detector().roi_heads.box_roi_pool.sampling_ratio == 2  # torchvision's default
    model = detector(roi_sampling_ratio=1)
    assert model.roi_heads.box_roi_pool.sampling_ratio == model.roi_heads.mask_roi_pool.sampling_ratio == 1
    features = {name: torch.randn(1, 4, 16 // 2**i, 16 // 2**i) for i, name in enumerate(["0", "1", "2", "3"])}
    box = [torch.tensor([[3.0, 5.0, 40.0, 29.0]])]  # small: RoIAlign takes it from level "0" (stride 4)
    pooled = model.roi_heads.box_roi_pool(features, box, [(64, 64)])
    one_sample = roi_align(features["0"], [box[0]], 7, spatial_scale=0.25, sampling_ratio=1)
    torch.testing.assert_close(pooled, one_sample)
    assert not torch.allclose(pooled, detector().roi_heads.box_roi_pool(features, box, [(64, 64)]))


def test_misspelled_detector_argument_is_named_not_ignored(one_thread):
    # torchvision passes unknown keywords on to its transform, which drops them: a typo would change nothing
    with pytest.raises(ValueError, match=r"'box_batch_size_per_imag' is not.*did you mean 'box_batch_size_per_image'"):
        detector(box_batch_size_per_imag=32)
