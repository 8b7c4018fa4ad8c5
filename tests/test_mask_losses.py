"""The fine mask head's losses against hand-computed cases: the projection term of a box filled and of a thin diagonal,
the pairwise term across and along colour edges, LAB colours, the horizontal flip, padding, and the true-mask terms."""
import math

import pytest
import torch

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from models.mask_losses import (FineMaskLoss, color_similarity, map_dice, pair_counts, pairwise_loss, projection_loss,
                                rgb_to_lab)

BIG = 30.0  # a logit whose sigmoid is 1 (or 0) to float precision


def canvas(rgb):
    """[B, 3, H, W] RGB in [0, 1] -> the normalised canvas the model sees."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (rgb - mean) / std


def box_region(size, x1, y1, x2, y2, batch=1):
    region = torch.zeros(batch, size, size, dtype=torch.bool)
    region[:, y1:y2, x1:x2] = True
    return region


def test_lab_of_known_colours():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]).T[None, :, :, None]
    lab = rgb_to_lab(rgb)[0, :, :, 0].T  # [4 colours, L a b]
    expected = torch.tensor([[100.0, 0.0, 0.0], [53.24, 80.09, 67.20], [0.0, 0.0, 0.0], [53.39, 0.0, 0.0]])
    assert torch.allclose(lab, expected, atol=0.05)


def test_projection_of_a_filled_box_is_zero_and_of_a_uniform_map_hand_computed():
    box = box_region(4, 1, 1, 3, 3).float()
    valid = torch.ones(1, 4, 4)
    filled = torch.where(box > 0, BIG, -BIG)
    assert projection_loss(filled, box, valid).item() == pytest.approx(0, abs=1e-5)
    # p = 0.5 everywhere: each projection is [.5, .5, .5, .5] against [0, 1, 1, 0]:
    # 1 - 2 * (0.5 + 0.5) / (4 * 0.25 + 2) = 1/3, twice.
    assert projection_loss(torch.zeros(1, 4, 4), box, valid).item() == pytest.approx(2 / 3, abs=1e-5)


def test_box_fill_of_the_box_is_zero_and_of_a_uniform_map_hand_computed():
    box = box_region(4, 1, 1, 3, 3).float()
    valid = torch.ones(1, 4, 4)
    assert map_dice(torch.where(box > 0, BIG, -BIG), box, valid).item() == pytest.approx(0, abs=1e-6)
    # p = 0.5 everywhere: 1 - (2 * 4 * 0.5 + 1) / (16 * 0.5 + 4 + 1) = 1 - 5 / 13
    assert map_dice(torch.zeros(1, 4, 4), box, valid).item() == pytest.approx(8 / 13, abs=1e-6)
    # Padding is no part of the map: the same uniform map on a half-padded canvas counts 8 cells, not 16.
    half = torch.ones(1, 4, 4)
    half[:, :, 2:] = 0
    assert map_dice(torch.zeros(1, 4, 4), box * half, half).item() == pytest.approx(1 - 3 / 7, abs=1e-6)


def diagonal_scene(size=16):
    """A red diagonal stroke (3 px wide) on grey, its box the whole 2..14 square: the thin object BoxInst's
    projection term cannot tell from its box, and the pairwise term can."""
    rgb = torch.full((1, 3, size, size), 0.5)
    stroke = torch.zeros(size, size, dtype=torch.bool)
    for i in range(2, 14):
        stroke[i, max(2, i - 1):min(14, i + 2)] = True
    rgb[0, :, stroke] = torch.tensor([0.9, 0.1, 0.1])[:, None]
    return canvas(rgb), stroke, box_region(size, 2, 2, 14, 14)


def test_thin_diagonal_object_projection_and_pairwise():
    img, stroke, box = diagonal_scene()
    valid = torch.ones(1, 16, 16)
    object_logits = torch.where(stroke, BIG, -BIG)[None]
    box_logits = torch.where(box, BIG, -BIG)
    # Its projections are the box's: both masks fit the box term.
    assert projection_loss(object_logits, box.float(), valid).item() == pytest.approx(0, abs=1e-5)
    assert projection_loss(box_logits, box.float(), valid).item() == pytest.approx(0, abs=1e-5)
    # The pairwise term: the stroke's own mask cuts only across colour edges (pairs not counted); the filled box cuts
    # the grey background at the box's edge, where the pairs count.
    similarity = color_similarity(img, 1, 2)
    on_object = pairwise_loss(object_logits, similarity, box.float(), valid, 2, 0.3).item()
    on_box = pairwise_loss(box_logits, similarity, box.float(), valid, 2, 0.3).item()
    assert on_object < 1e-6 and on_box > 1.0


def test_pairwise_across_a_colour_edge_counts_only_same_colour_pairs():
    size = 12
    rgb = torch.zeros(1, 3, size, size)
    rgb[..., size // 2:] = 1.0  # left half black, right half white
    img = canvas(rgb)
    similarity = color_similarity(img, 1, 2)
    box, valid = box_region(size, 0, 0, size, size).float(), torch.ones(1, size, size)
    # A uniform map: every counted pair costs -log(p^2 + (1 - p)^2).
    z = 0.7
    p = 1 / (1 + math.exp(-z))
    uniform = pairwise_loss(torch.full((1, size, size), z), similarity, box, valid, 2, 0.3).item()
    assert uniform == pytest.approx(-math.log(p * p + (1 - p) * (1 - p)), rel=1e-5)
    # Labels that change exactly at the colour edge cost nothing: no counted pair crosses it.
    split = torch.where(torch.arange(size) < size // 2, BIG, -BIG).expand(1, size, size)
    assert pairwise_loss(split, similarity, box, valid, 2, 0.3).item() < 1e-6
    # Black-white pairs are below the threshold, black-black ones at similarity 1.
    assert similarity.max() == pytest.approx(1.0) and similarity.min() < 1e-10


def test_pair_counts_against_a_loop_over_every_pair():
    g = torch.Generator().manual_seed(3)
    size, dilation, thresholds = 7, 2, (0.5, 0.2, 0.05)
    similarity = torch.rand(2, 8, size, size, generator=g)
    box, valid, true = (torch.rand(2, size, size, generator=g) < p for p in (0.6, 0.9, 0.5))
    expected = {kind: [0, [0] * len(thresholds)] for kind in ("object", "background", "across")}
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    for b in range(2):
        for y in range(size):
            for x in range(size):
                for k, (dy, dx) in enumerate(offsets):
                    ny, nx = y + dilation * dy, x + dilation * dx
                    inside = 0 <= ny < size and 0 <= nx < size
                    if not (box[b, y, x] and valid[b, y, x] and inside and valid[b, ny, nx]):
                        continue
                    kind = "across" if true[b, y, x] != true[b, ny, nx] else "object" if true[b, y, x] else "background"
                    expected[kind][0] += 1
                    for t, threshold in enumerate(thresholds):
                        expected[kind][1][t] += int(similarity[b, k, y, x] >= threshold)
    counts = pair_counts(similarity, box, valid, true, dilation, thresholds)
    assert {kind: [pairs, counted] for kind, (pairs, counted) in counts.items()} == expected
    assert all(pairs > 0 for pairs, _ in expected.values())


def test_pair_counts_on_a_two_colour_image_count_no_pair_across_the_outline():
    size = 12
    rgb = torch.zeros(1, 3, size, size)
    rgb[:, 0, :, :5] = 1.0  # a red object on the left, black background
    true = torch.zeros(1, size, size, dtype=torch.bool)
    true[:, :, :5] = True
    box, valid = box_region(size, 0, 0, 8, size), torch.ones(1, size, size)
    counts = pair_counts(color_similarity(canvas(rgb), 1, 2), box, valid, true, 2, (0.3,))
    for kind in ("object", "background"):
        pairs, counted = counts[kind]
        assert pairs > 0 and counted == [pairs]
    assert counts["across"][0] > 0 and counts["across"][1] == [0]


def test_pairwise_outside_the_box_is_not_counted():
    size = 8
    img = canvas(torch.full((1, 3, size, size), 0.5))
    similarity, valid = color_similarity(img, 1, 2), torch.ones(1, size, size)
    logits = torch.randn(1, size, size)
    assert pairwise_loss(logits, similarity, torch.zeros(1, size, size), valid, 2, 0.3).item() == 0.0


def random_scene(size=32, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, 3, size, size, generator=g)
    box = torch.zeros(batch, size, size, dtype=torch.bool)
    box[0, 4:20, 6:26] = True
    box[1, 10:30, 2:14] = True
    logits = torch.randn(batch, size // 2, size // 2, generator=g) * 2
    return img, box, logits


@pytest.mark.parametrize("stride", [1, 2])
def test_losses_are_invariant_under_the_horizontal_flip(stride):
    size = 32
    img, box, _ = random_scene(size)
    logits = torch.randn(2, size // stride, size // stride, generator=torch.Generator().manual_seed(3))
    rect = torch.tensor([[0, 0, size, size], [4, 2, 30, 32]])
    flipped_rect = torch.stack([size - rect[:, 2], rect[:, 1], size - rect[:, 0], rect[:, 3]], dim=1)
    loss = FineMaskLoss(stride, warmup=0)
    plain = loss(logits, box, img, rect)
    flipped = loss(logits.flip(-1), box.flip(-1), img.flip(-1), flipped_rect)
    for key in plain:
        assert flipped[key].item() == pytest.approx(plain[key].item(), rel=1e-5), key


def test_padding_never_counts():
    size = 32
    _, box, logits = random_scene(size)
    img = canvas(torch.full((2, 3, size, size), 0.5))  # every pair alike: all of them count unless on padding
    rect = torch.tensor([[0, 0, 24, size], [0, 8, size, size]])  # padding: the right third / the top quarter
    loss = FineMaskLoss(2, warmup=0)
    before = loss(logits, box, img, rect)
    changed_logits, changed_img = logits.clone(), img.clone()
    changed_logits[0, :, 12:] = torch.randn(16, 4) * 5  # cells of columns 24-31
    changed_logits[1, :4] = -5.0  # rows 0-7
    changed_img[0, :, :, 24:] = 3.0
    changed_img[1, :, :8] = -2.0
    after = loss(changed_logits, box, changed_img, rect)
    for key in before:
        assert after[key].item() == pytest.approx(before[key].item(), rel=1e-6), key


def test_pairwise_warmup_and_weights():
    img, box, logits = random_scene()
    rect = torch.tensor([[0, 0, 32, 32]] * 2)
    full = FineMaskLoss(2, weight_box_fill=2.0, warmup=0.2)(logits, box, img, rect, fraction=0.5)
    half = FineMaskLoss(2, weight_box_fill=2.0, warmup=0.2)(logits, box, img, rect, fraction=0.1)
    assert half["loss_pairwise"].item() == pytest.approx(full["loss_pairwise"].item() / 2, rel=1e-6)
    weighted = FineMaskLoss(2, weight_projection=3.0, weight_pairwise=0.5, weight_box_fill=0.25, warmup=0)(
        logits, box, img, rect)
    assert weighted["loss_projection"].item() == pytest.approx(3 * full["loss_projection"].item(), rel=1e-6)
    assert weighted["loss_box_fill"].item() == pytest.approx(0.25 / 2 * full["loss_box_fill"].item(), rel=1e-6)
    assert weighted["loss_pairwise"].item() == pytest.approx(0.5 * full["loss_pairwise"].item(), rel=1e-6)


def test_mask_supervision_uses_the_true_mask_and_keeps_box_terms_for_samples_without_one():
    size = 16
    img, _, _ = random_scene(size)
    box = box_region(size, 2, 2, 14, 14, batch=2)
    gt = torch.zeros(2, size, size, dtype=torch.bool)
    gt[:, 4:12, 4:12] = True  # a square inside the box
    rect = torch.tensor([[0, 0, size, size]] * 2)
    loss = FineMaskLoss(1, supervision="mask", warmup=0)
    perfect = torch.where(gt, BIG, -BIG)
    both = loss(perfect, box, img, rect, gt, torch.tensor([True, True]))
    assert both["loss_mask_dice"].item() == pytest.approx(0, abs=1e-4)
    assert both["loss_mask_focal"].item() == pytest.approx(0, abs=1e-6)
    box_terms = ("loss_projection", "loss_pairwise", "loss_box_fill")
    assert all(both[key].item() == 0 for key in box_terms)  # no sample from its box
    # The true mask is not the box: the box terms would find fault with it.
    one = loss(perfect, box, img, rect, gt, torch.tensor([True, False]))
    assert one["loss_projection"].item() > 0.1
    # The box-filled map fits the box terms and not the mask.
    boxed = loss(torch.where(box, BIG, -BIG), box, img, rect, gt, torch.tensor([True, True]))
    assert boxed["loss_mask_dice"].item() > 0.2


def test_gradients_reach_the_logits_only_where_counted():
    size = 16
    img, box, _ = random_scene(size)
    logits = torch.zeros(2, size, size, requires_grad=True)
    rect = torch.tensor([[0, 0, 8, size], [0, 0, size, size]])
    total = sum(FineMaskLoss(1, warmup=0)(logits, box, img, rect).values())
    total.backward()
    assert logits.grad[0, :, 8:].abs().max() == 0  # padding
    assert logits.grad.abs().sum() > 0


def test_a_finer_loss_stride_scores_the_map_upsampled_as_eval_uses_it():
    import torch.nn.functional as F

    size = 32
    _, box, logits = random_scene(size)  # logits at stride 2
    img = canvas(torch.full((2, 3, size, size), 0.4))  # one colour: the pairwise term counts every pair in the box
    rect = torch.tensor([[0, 0, size, size], [0, 4, size, 28]])
    upsampled = F.interpolate(logits[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    finer = FineMaskLoss(2, loss_stride=1, warmup=0)(logits, box, img, rect)
    direct = FineMaskLoss(1, warmup=0)(upsampled, box, img, rect)
    coarse = FineMaskLoss(2, warmup=0)(logits, box, img, rect)
    for key in finer:
        assert finer[key].item() == pytest.approx(direct[key].item(), rel=1e-6), key
    assert finer["loss_pairwise"].item() != pytest.approx(coarse["loss_pairwise"].item(), rel=1e-3)


def test_loss_stride_coarser_than_the_head_is_refused():
    from helpers import tiny_train_args

    from models.mask_losses import build_fine_mask_loss

    with pytest.raises(ValueError, match="coarser than the head"):
        build_fine_mask_loss(tiny_train_args("--mask_head", "fine", "--mask_stride", "2", "--mask_loss_stride", "4"))
    assert build_fine_mask_loss(tiny_train_args("--mask_head", "fine")).loss_stride == 1  # 64 px canvas: head at 2
    assert build_fine_mask_loss(tiny_train_args()) is None
