"""DINO's own parts on small tensors: the contrastive denoising queries and their attention mask, mixed query
selection, look forward twice; and the detector's input / output conventions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import box_convert

from focalbench.models import build_backbone
from focalbench.models.dino import (
    DINO,
    DINOCriterion,
    DINODecoder,
    MixedQuerySelection,
    contrastive_denoising,
    look_forward_twice,
)

HIDDEN = 16


def boxes(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def two_images() -> list[dict]:
    """Image 0 with two boxes, image 1 with one (cxcywh in [0, 1], well inside so noise is never clipped)."""
    return [
        {"class_labels": torch.tensor([0, 2]), "boxes": boxes([0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.2])},
        {"class_labels": torch.tensor([1]), "boxes": boxes([0.4, 0.5, 0.2, 0.1])},
    ]


# ---------------------------------------------------------------- contrastive denoising
def test_cdn_attention_mask_blocks_exactly_the_leaking_pairs():
    # 2 GT at most -> 4 // 2 = 2 groups of (2 positive + 2 negative) queries = 8 denoising queries, then 3 matching.
    dn = contrastive_denoising(two_images(), 3, 3, nn.Embedding(4, HIDDEN), num_dn_queries=4)
    assert dn.num_groups == 2 and dn.num_queries == 8
    expected = [  # row = query, column = key; 1 = may not attend
        "00001111000",  # group 0 (queries 0-3) sees itself and the matching queries, not group 1
        "00001111000",
        "00001111000",
        "00001111000",
        "11110000000",  # group 1 (queries 4-7): not group 0
        "11110000000",
        "11110000000",
        "11110000000",
        "11111111000",  # matching queries (8-10) see no denoising query
        "11111111000",
        "11111111000",
    ]
    assert dn.blocked.tolist() == [[c == "1" for c in row] for row in expected]


def test_cdn_positive_and_negative_copies_and_their_targets():
    torch.manual_seed(0)
    targets = two_images()
    embedding = nn.Embedding(4, HIDDEN)
    dn = contrastive_denoising(targets, 3, 5, embedding, num_dn_queries=4, label_noise_ratio=0.0, box_noise_scale=0.4)
    # positives are the first max_gt (= 2) of each group of 4; image 1 has one box, its second slot is padding
    assert [m[0].tolist() for m in dn.matches] == [[0, 1, 4, 5], [0, 4]]
    assert [m[1].tolist() for m in dn.matches] == [[0, 1, 0, 1], [0, 0]]
    for image, target in enumerate(targets):
        truth = box_convert(target["boxes"], "cxcywh", "xyxy")
        half = target["boxes"][:, 2:].repeat(1, 2) / 2  # corner noise unit: half the width (x) / height (y)
        n = len(truth)
        for group in range(2):
            start = 4 * group
            positive = box_convert(dn.anchors[image, start : start + n], "cxcywh", "xyxy")
            negative = box_convert(dn.anchors[image, start + 2 : start + 2 + n], "cxcywh", "xyxy")
            shift_pos = (positive - truth).abs() / half
            shift_neg = (negative - truth).abs() / half
            assert (shift_pos < 0.4 + 1e-5).all()  # positives: within scale x half the size
            assert (shift_neg >= 0.4 - 1e-5).all() and (shift_neg < 0.8 + 1e-5).all()  # negatives: 1x to 2x that
            labels = target["class_labels"]
            for offset in (0, 2):  # no label noise: both copies embed the true labels
                torch.testing.assert_close(dn.content[image, start + offset : start + offset + n], embedding(labels))
    torch.testing.assert_close(dn.content[1, 1], embedding.weight[3])  # padding slot: the extra class row


def test_cdn_label_noise_flips_about_a_quarter_at_ratio_one_half():
    torch.manual_seed(0)
    embedding = nn.Embedding(81, HIDDEN)
    targets = [{"class_labels": torch.zeros(100, dtype=torch.long), "boxes": boxes(*[[0.5, 0.5, 0.2, 0.2]] * 100)}]
    dn = contrastive_denoising(targets, 80, 10, embedding, num_dn_queries=1000, label_noise_ratio=0.5)
    flipped = (dn.content != embedding.weight[0]).any(-1).float().mean().item()
    assert 0.2 < flipped < 0.3  # p = ratio / 2, as DINO (a flip may land on the same class: 1/80 of them)


def test_no_denoising_without_boxes():
    empty = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    assert contrastive_denoising(empty, 3, 5, nn.Embedding(4, HIDDEN)) is None


# ---------------------------------------------------------------- mixed query selection
def test_mixed_query_selection_anchors_are_the_top_k_proposals_content_is_learned():
    torch.manual_seed(0)
    selection = MixedQuerySelection(HIDDEN, num_classes=3, num_queries=4)
    memory = torch.randn(2, 6, HIDDEN, requires_grad=True)  # one level of 2 x 3 tokens
    valid = torch.ones(2, 6, dtype=torch.bool)
    out = selection(memory, valid, [(2, 3)])

    scores = selection.class_head(selection.enc_output_norm(selection.enc_output(memory))).max(-1).values
    expected = scores.topk(4, dim=1).indices
    assert out.indices.tolist() == expected.tolist()
    # the box head starts at zero: the anchors are the proposals themselves, token (y, x) -> its cell centre, 0.05 wide
    ys, xs = expected // 3, expected % 3
    size = torch.full(xs.shape, 0.05)
    torch.testing.assert_close(out.anchors, torch.stack([(xs + 0.5) / 3, (ys + 0.5) / 2, size, size], -1))
    assert not out.anchors.requires_grad and out.boxes.requires_grad  # detached for the decoder, trained as output
    # content queries: the learned embedding, the same for both images, independent of the encoder
    torch.testing.assert_close(out.content, selection.content.weight.expand(2, -1, -1))
    assert torch.autograd.grad(out.content.sum(), memory, allow_unused=True)[0] is None
    assert torch.autograd.grad(out.boxes.sum() + out.logits.sum(), memory)[0].abs().sum() > 0


# ---------------------------------------------------------------- look forward twice
def test_look_forward_twice_keeps_the_gradient_into_the_previous_offset():
    previous_offset = torch.tensor([0.3, -0.2, 0.1, 0.4], requires_grad=True)
    reference = previous_offset.sigmoid()  # the previous layer's refined box, undetached
    offset = torch.tensor([0.1, 0.1, -0.2, 0.0], requires_grad=True)
    prediction, refined = look_forward_twice(offset, offset, reference)
    torch.testing.assert_close(prediction, (offset + previous_offset).sigmoid())
    torch.testing.assert_close(refined, prediction)  # the same box; only the gradient paths differ
    assert torch.autograd.grad(prediction.sum(), previous_offset)[0].abs().min() > 0
    assert torch.autograd.grad(refined.sum(), previous_offset, allow_unused=True)[0] is None


def tiny_decoder(layers: int = 3) -> tuple[DINODecoder, dict]:
    torch.manual_seed(0)
    model = DINO(
        build_backbone("resnet18"), 3, hidden_dim=HIDDEN, encoder_layers=1, decoder_layers=layers, num_heads=2,
        ffn_dim=32, num_points=2, num_queries=5,
    )  # fmt: skip
    shapes = [(4, 4), (2, 2), (1, 1), (1, 1)]
    memory = torch.randn(2, sum(h * w for h, w in shapes), HIDDEN)
    spatial = torch.tensor(shapes)
    inputs = {
        "memory": memory,
        "memory_valid": torch.ones(2, memory.shape[1], dtype=torch.bool),
        "spatial_shapes": spatial,
        "spatial_shapes_list": shapes,
        "level_start_index": torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]]),
        "valid_ratios": torch.ones(2, 4, 2),
    }
    for p in model.decoder.box_head.parameters():  # a trained-looking head, so boxes move
        nn.init.normal_(p, std=0.3)
    return model.decoder, inputs


def test_decoder_box_of_layer_two_trains_the_offset_of_layer_one_but_not_earlier():
    decoder, inputs = tiny_decoder(layers=3)
    offsets = []  # box head calls per layer: prediction offset (normed output), then refinement offset (raw)
    decoder.box_head.register_forward_hook(lambda module, args, out: offsets.append(out))
    content = torch.randn(2, 5, HIDDEN)
    anchors = torch.rand(2, 5, 4) * 0.5 + 0.25
    logits, boxes = decoder(content, anchors, **inputs)
    assert logits.shape == (3, 2, 5, 3) and boxes.shape == (3, 2, 5, 4)
    refinement = offsets[1::2]  # layer i's refined box = sigma(refinement[i] + logit(box of layer i - 1))
    assert reaches(boxes[1], refinement[0])  # layer 2's loss reaches layer 1's offset: looks forward twice
    assert not reaches(boxes[2], refinement[0])  # but no further
    assert not reaches(boxes[0], refinement[0])  # layer 1 predicts with its other (normalised-output) offset
    assert reaches(boxes[2], refinement[1])


def reaches(output: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether ``output`` has a nonzero gradient with respect to ``tensor``."""
    grad = torch.autograd.grad(output.sum(), tensor, retain_graph=True, allow_unused=True)[0]
    return grad is not None and bool(grad.abs().sum() > 0)


def test_decoder_attention_mask_stops_leaks_between_groups_and_into_matching_queries():
    decoder, inputs = tiny_decoder(layers=2)
    decoder.eval()
    dn = contrastive_denoising(two_images(), 3, 5, nn.Embedding(4, HIDDEN), num_dn_queries=4)
    content = torch.cat([dn.content, torch.randn(2, 5, HIDDEN)], 1).detach()
    anchors = torch.cat([dn.anchors, torch.rand(2, 5, 4) * 0.5 + 0.25], 1).detach()
    with torch.no_grad():
        logits, boxes = decoder(content, anchors, **inputs, blocked=dn.blocked)
        changed = content.clone()
        changed[:, :4] += 1.0  # a different group 0
        logits2, boxes2 = decoder(changed, anchors, **inputs, blocked=dn.blocked)
        unmasked, _ = decoder(changed, anchors, **inputs)
    torch.testing.assert_close(logits2[:, :, 4:], logits[:, :, 4:])  # group 1 and the matching queries: unchanged
    torch.testing.assert_close(boxes2[:, :, 4:], boxes[:, :, 4:])
    assert not torch.allclose(logits2[:, :, :4], logits[:, :, :4])
    assert not torch.allclose(unmasked[:, :, 8:], logits[:, :, 8:])  # without the mask the matching queries leak


# ---------------------------------------------------------------- initialisation
def test_transformer_initialisation_follows_the_official_code():
    # DINO's DeformableTransformer._reset_parameters: Xavier-uniform, U(±√(6 / (fan_in + fan_out))), for every matrix
    # of the transformer (encoder, decoder layers, positional-query MLP, proposal projection, content queries), then
    # the deformable attention's own: zero offset weights with a grid of biases, zero attention-weight logits.
    # Hugging Face's normal(0, 0.02) instead made the CPU demo learn slower (see configs/demo_det_dino.yaml).
    torch.manual_seed(0)
    model = DINO(
        build_backbone("resnet18"), 3, hidden_dim=64, encoder_layers=1, decoder_layers=2, num_heads=4, ffn_dim=256,
        num_points=2, num_queries=50,
    )  # fmt: skip
    layer = model.decoder.layers[1]
    matrices = {
        "encoder ffn": model.encoder.layers[0].mlp.fc1.weight,
        "self-attention": layer.self_attn.q_proj.weight,
        "cross-attention values": layer.encoder_attn.value_proj.weight,
        "decoder ffn": layer.mlp.fc2.weight,
        "positional-query MLP": model.decoder.query_pos_head.layers[0].weight,
        "proposal projection": model.query_selection.enc_output.weight,
        "content queries": model.query_selection.content.weight,
    }
    for name, weight in matrices.items():
        fan_out, fan_in = weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert weight.abs().max().item() <= bound, name
        assert weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1), name
    for attention in (model.encoder.layers[0].self_attn, layer.encoder_attn):
        assert not attention.sampling_offsets.weight.any() and not attention.attention_weights.weight.any()
        assert not attention.attention_weights.bias.any()
        first_point = attention.sampling_offsets.bias.view(4, -1, 2, 2)[:, :, 0]  # heads, levels, points, xy
        assert first_point.abs().amax(-1).eq(1).all()  # each head's first point on a unit square, the next at 2x


# ---------------------------------------------------------------- the detector's conventions
@pytest.fixture
def tiny_dino() -> DINO:
    torch.manual_seed(0)
    backbone = build_backbone("focalnet_tiny_srf", embed_dim=8, depths=[1, 1, 1, 1], focal_windows=9)
    return DINO(
        backbone, 4, hidden_dim=32, encoder_layers=1, decoder_layers=2, num_heads=4, ffn_dim=64, num_queries=20,
        num_dn_queries=10, min_size=64, max_size=64, num_select=30,
    )  # fmt: skip


def test_preprocess_normalises_boxes_to_the_unpadded_image_and_masks_the_padding(tiny_dino):
    images = [torch.rand(3, 64, 48), torch.rand(3, 32, 64)]
    targets = [
        {"boxes": boxes([0, 0, 24, 32], [12, 16, 48, 64]), "labels": torch.tensor([1, 4])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    pixels, valid, normalised = tiny_dino.preprocess(images, targets)
    assert pixels.shape == (2, 3, 64, 64)
    assert valid[0, :, :48].all() and not valid[0, :, 48:].any()
    assert valid[1, :32].all() and not valid[1, 32:].any()
    torch.testing.assert_close(normalised[0]["boxes"], boxes([0.25, 0.25, 0.5, 0.5], [0.625, 0.625, 0.75, 0.75]))
    assert normalised[0]["class_labels"].tolist() == [0, 3] and normalised[1]["boxes"].shape == (0, 4)


def test_training_losses_reach_every_part_and_postprocess_scales_to_the_original_size(tiny_dino):
    images = [torch.rand(3, 64, 48), torch.rand(3, 40, 64)]
    targets = [{"boxes": boxes([2, 3, 20, 30], [10, 10, 40, 30]), "labels": torch.tensor([1, 3])}]
    targets.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)})
    tiny_dino.train()
    pixels, valid, normalised = tiny_dino.preprocess(images, targets)
    outputs = tiny_dino(pixels, valid, normalised)
    losses = DINOCriterion(4)(outputs, normalised)
    assert {"loss_ce", "loss_bbox_0", "loss_giou_enc", "loss_ce_dn", "loss_bbox_dn_0"} <= set(losses)
    sum(losses.values()).backward()
    for part in ("backbone", "encoder", "query_selection", "decoder", "label_embedding", "input_proj"):
        grads = [p.grad for p in getattr(tiny_dino, part).parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, part

    tiny_dino.eval()
    with torch.no_grad():
        pixels, valid, _ = tiny_dino.preprocess(images)
        outputs = tiny_dino(pixels, valid)
    sizes = [(64, 48), (40, 64)]
    detections = tiny_dino.postprocess(outputs, sizes)
    assert [len(d["scores"]) for d in detections] == [30, 30]
    probs = outputs["logits"][-1].sigmoid()
    for det, prob, box, (height, width) in zip(detections, probs, outputs["boxes"][-1], sizes):
        best = prob.flatten().argmax()
        query, label = divmod(best.item(), 4)
        assert det["scores"][0] == prob.max() and det["labels"][0] == label + 1  # labels back to 1..K
        expected = box_convert(box[query], "cxcywh", "xyxy") * torch.tensor([width, height, width, height])
        torch.testing.assert_close(det["boxes"][0], expected)
