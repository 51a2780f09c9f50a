import pytest
import torch

from unihema.data.vocab import CELL_ATTRIBUTES, FOV_ATTRIBUTES
from unihema.inference.postprocess import (
    cell_class_probabilities,
    decode_attributes,
    decode_detections,
    mask_probabilities,
)
from unihema.model.outputs import BoxOutput


def _two_queries_four_classes() -> BoxOutput:
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 2, 1] = 5.0
    logits[0, 2, 2] = 4.0  # query 2's second class
    logits[0, 0, 3] = 2.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.25, 0.5, 0.5, 1.0]]])
    return BoxOutput(logits, boxes)


def test_decode_detections_top_pairs_in_pixels():
    found = decode_detections(_two_queries_four_classes(), torch.tensor([[100.0, 200.0]]), 2)[0]
    # The two best (query, class) pairs both come from query 2.
    assert found.labels.tolist() == [1, 2] and found.queries.tolist() == [2, 2]
    assert torch.allclose(found.boxes[0], torch.tensor([0.0, 0.0, 100.0, 100.0]))


def test_decode_detections_one_box_per_query_and_threshold():
    output = _two_queries_four_classes()
    found = decode_detections(output, [[100, 200]], 10, one_per_query=True)[0]
    assert found.queries.tolist() == [2, 0, 1] and found.labels.tolist() == [1, 3, 0]
    confident = decode_detections(output, [[100, 200]], 10, score_threshold=0.5, one_per_query=True)[0]
    assert confident.queries.tolist() == [2, 0]
    assert torch.allclose(confident.scores, torch.sigmoid(torch.tensor([5.0, 2.0])))
    # A box normalised to the image lands on the same place at any size: original-image pixels.
    doubled = decode_detections(output, [[200, 400]], 10, one_per_query=True)[0]
    torch.testing.assert_close(doubled.boxes, found.boxes * 2)


def test_decode_detections_reads_attributes_of_the_kept_queries():
    output = _two_queries_four_classes()
    output.attributes = torch.zeros(1, 3, 12)
    output.attributes[0, 2, 1] = 3.0  # query 2: first attribute -> value 1, confidently
    found = decode_detections(output, [[10, 10]], 2, one_per_query=True, attribute_schema=FOV_ATTRIBUTES)[0]
    assert found.attributes.shape == (2, len(FOV_ATTRIBUTES))
    assert found.attributes[0, 0] == 1 and found.attribute_scores[0, 0] == pytest.approx(
        torch.tensor([0.0, 3.0]).softmax(0)[1].item()
    )
    assert found.attribute_scores[1, 0] == pytest.approx(0.5)


def test_decode_attributes_argmax_per_group():
    flat = torch.zeros(1, 31)
    flat[0, 1] = 1  # cell_size -> small
    flat[0, 4 + 4] = 1  # nucleus_shape -> segmented-multilobed
    values, probabilities = decode_attributes(flat, CELL_ATTRIBUTES)
    assert values[0, 0] == 1 and values[0, 2] == 4 and values.shape == (1, 11)
    assert probabilities.shape == (1, 11) and bool(((probabilities > 0) & (probabilities <= 1)).all())


def test_mask_probabilities_crop_the_padding_then_resize_to_the_original():
    logits = torch.full((1, 1, 8, 8), -10.0)
    logits[0, 0, :4, :3] = 10.0  # the image is the top-left 4 x 6 of the padded batch
    (plain,) = mask_probabilities(logits, (8, 8), [(4, 6)])
    assert plain.shape == (4, 6) and bool((plain[:, :3] > 0.99).all()) and bool((plain[:, 3:] < 0.01).all())
    (original,) = mask_probabilities(logits, (8, 8), [(4, 6)], [(40, 60)])
    assert original.shape == (40, 60)
    assert float(original[:, :25].min()) > 0.9 and float(original[:, 35:].max()) < 0.1


def test_cell_class_probabilities_sum_to_one():
    probabilities = cell_class_probabilities(torch.randn(3, 7))
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3))
