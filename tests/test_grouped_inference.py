"""The CNN once per image: an image's expressions grouped (image_index) give the outputs of one canvas per
expression, in the model, the evaluation loop, the predictor and the ONNX Runtime backend."""
import numpy as np
import pytest
import torch

from helpers import synthetic_batch, tiny_args
from models import build_model


def grouped_inputs(args, images=2, per_image=(3, 1)):
    """Distinct images and their expressions: (img [I], img_mask [I], ids [B], mask [B], image_index [B])."""
    batch = synthetic_batch(args, batch=sum(per_image), seed=3)
    img = batch["img"][:images]
    img_mask = torch.zeros_like(batch["img_mask"][:images])
    img_mask[0, :, args.imsize * 3 // 4:] = True  # one image pasted narrower: its padding must follow it
    img[0, :, :, args.imsize * 3 // 4:] = 0
    index = torch.repeat_interleave(torch.arange(images), torch.tensor(per_image))
    return img, img_mask, batch["text_ids"], batch["text_mask"], index


@pytest.mark.parametrize("head", ["grid", "fine"])
def test_grouped_forward_equals_one_canvas_per_expression(head):
    args = tiny_args("--mask_head", head)
    torch.manual_seed(0)
    model = build_model(args).eval()
    img, img_mask, ids, mask, index = grouped_inputs(args)
    with torch.no_grad():
        expected = model(img[index], img_mask[index], ids, mask, aux=False)
        got = model(img, img_mask, ids, mask, aux=False, image_index=index)
    assert got["seg_logits"].shape == expected["seg_logits"].shape
    torch.testing.assert_close(got["pred_boxes"], expected["pred_boxes"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got["seg_logits"].sigmoid(), expected["seg_logits"].sigmoid(), atol=1e-5, rtol=0)
    # The grouping is what it claims: a wrong index gives other boxes.
    with torch.no_grad():
        swapped = model(img, img_mask, ids, mask, aux=False, image_index=1 - index)
    assert (swapped["pred_boxes"] - expected["pred_boxes"]).abs().max() > 1e-4


def count_backbone_images(predictor):
    """A forward hook that records how many images each CNN call gets."""
    calls = []
    predictor.model.visual.backbone.register_forward_hook(lambda module, inputs, out: calls.append(len(inputs[0])))
    return calls


@pytest.mark.parametrize("head", ["grid", "fine"])
def test_predictor_encodes_each_image_once(head, tmp_path):
    from helpers import noise_image, write_tiny_checkpoint
    from inference import SegVGPredictor

    checkpoint = write_tiny_checkpoint(tmp_path / "model.pth", extra=("--mask_head", head))
    predictor = SegVGPredictor.from_checkpoint(checkpoint, device="cpu")
    photo, other = noise_image(tmp_path / "a.png"), noise_image(tmp_path / "b.png", 60, 100, seed=1)
    phrases = ["the red circle", "a blue square", "the big green triangle", "the red circle"]
    images = [str(photo), other, str(photo), str(photo)]  # one path three times, another as a Path object
    separate = [predictor(image, phrase) for image, phrase in zip(images, phrases)]
    separate_on_photo = [predictor(photo, phrase) for phrase in phrases]
    calls = count_backbone_images(predictor)
    grouped = predictor.predict(images, phrases)
    assert calls == [2]  # two distinct images, one CNN call
    listed = predictor(photo, phrases)  # one image, a list of phrases
    assert calls == [2, 1] and len(listed) == len(phrases)
    for one, two in zip(separate, grouped):
        assert one["phrase"] == two["phrase"] and one["image_size"] == two["image_size"]
        np.testing.assert_allclose(one["box"], two["box"], atol=0.05)
        np.testing.assert_allclose(one["mask"], two["mask"], atol=1e-4)
    for one, two in zip(separate_on_photo, listed):
        np.testing.assert_allclose(one["box"], two["box"], atol=0.05)
        np.testing.assert_allclose(one["mask"], two["mask"], atol=1e-4)
