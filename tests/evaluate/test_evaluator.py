import numpy as np
import pytest
import torch
from torch import nn

from unihema.data.schema import ArrayImage, ArrayMask, Sample, Task
from unihema.data.transforms import TransformConfig
from unihema.evaluate import metrics
from unihema.evaluate.evaluator import EvalConfig, evaluate, evaluate_task
from unihema.model.outputs import CellOutput, DetectionOutput, SegmentationOutput

SMALL = EvalConfig(
    batch_size=2, transforms=TransformConfig(seg_size=32, cls_size=32, text_size=32), pad_to_multiple=1
)


class ConstantModel(nn.Module):
    """Answers every segmentation pixel as foreground, every cell as class 3, every question with its prompt."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, images, task, prompts=None, targets=None, image_mask=None):
        batch = images.shape[0]
        if Task(task) is Task.SEGMENTATION:
            masks = torch.full((batch, 1, *images.shape[-2:]), 10.0)
            return SegmentationOutput(masks=masks, masks_lowres=masks[..., ::8, ::8])
        logits = torch.zeros(batch, 50)
        logits[:, 3] = 1
        return CellOutput(
            features=torch.zeros(batch, 4), class_logits=logits, attribute_logits=torch.zeros(batch, 31)
        )

    def generate_text(self, images, prompts, image_mask=None, num_beams=1, max_new_tokens=32):
        return [p.removeprefix("Q: ") for p in prompts]


def _image():
    return ArrayImage(np.full((32, 32, 3), 128, np.uint8))


def test_segmentation_dice_matches_hand_computation():
    masks = [np.zeros((32, 32), bool) for _ in range(3)]
    masks[0][:8] = True
    masks[1][:, :16] = True
    samples = [
        Sample(_image(), Task.SEGMENTATION, "t", f"s{i}", mask=ArrayMask(m)) for i, m in enumerate(masks)
    ]
    result = evaluate_task(ConstantModel(), samples, Task.SEGMENTATION, SMALL)
    expected = np.mean([metrics.dice_scores([np.ones_like(m)], [m])[0] for m in masks])
    assert result.metric == "Dice" and result.value == pytest.approx(expected)


class FixedSizeMaskModel(nn.Module):
    """Predicts a 64 x 64 mask (like a fixed ``qgmf_mask_size``) whose left half is foreground."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, images, task, prompts=None, targets=None, image_mask=None):
        logits = torch.full((images.shape[0], 1, 64, 64), -10.0)
        logits[..., :32] = 10.0
        return SegmentationOutput(masks=logits, masks_lowres=logits[..., ::8, ::8])


def test_segmentation_resizes_fixed_size_masks_to_the_input():
    # The 32 px inputs are covered by the whole 64 px prediction, not by its top-left 32 px corner.
    mask = np.zeros((32, 32), bool)
    mask[:, :16] = True
    samples = [Sample(_image(), Task.SEGMENTATION, "t", "s0", mask=ArrayMask(mask))]
    result = evaluate_task(FixedSizeMaskModel(), samples, Task.SEGMENTATION, SMALL)
    assert result.value == pytest.approx(1.0)


def test_classification_and_text_metrics():
    samples = [
        Sample(_image(), Task.CLASSIFICATION, "t", f"c{i}", cell_class=c) for i, c in enumerate([3, 3, 5, 7])
    ]
    text = [
        Sample(
            _image(),
            Task.VQA,
            "t",
            "q0",
            prompt="Q: the nucleus is round",
            text_target="the nucleus is round",
        ),
        Sample(_image(), Task.VQA, "t", "q1", prompt="Q: big", text_target="small"),
    ]
    results = evaluate(ConstantModel(), {Task.CLASSIFICATION: samples, Task.VQA: text}, SMALL)
    assert results[Task.CLASSIFICATION].details["accuracy"] == pytest.approx(0.5)
    assert results[Task.VQA].details["exact_match"] == pytest.approx(0.5)
    assert results[Task.VQA].value == pytest.approx(
        metrics.bleu4(["the nucleus is round", "big"], ["the nucleus is round", "small"])
    )
    with pytest.raises(ValueError, match="no samples"):
        evaluate_task(ConstantModel(), [], Task.CLASSIFICATION)


def test_eval_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig(batch_size=0)
    with pytest.raises(ValueError, match="mask_threshold"):
        EvalConfig(mask_threshold=2.0)


class OneQueryTwoClassesModel(nn.Module):
    """Query 0 covers the left cell and scores high for two classes; query 1 is elsewhere and unsure."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, images, task, prompts=None, targets=None, image_mask=None):
        batch = images.shape[0]
        logits = torch.full((batch, 2, 47), -10.0)
        logits[:, 0, 3] = 5.0
        logits[:, 0, 4] = 4.0
        boxes = torch.tensor([[0.25, 0.5, 0.5, 1.0], [0.9, 0.9, 0.05, 0.05]]).expand(batch, 2, 4)
        return DetectionOutput(logits, boxes, torch.zeros(batch, 2, 12))


def test_fov_morphology_scores_one_box_per_query():
    boxes = np.array([[0, 0, 16, 32], [0, 1, 16, 32]], dtype=np.float32)  # two overlapping cells
    sample = Sample(
        _image(),
        Task.FOV_MORPHOLOGY,
        "t",
        "f0",
        boxes=boxes,
        box_labels=[3, 4],
        box_attributes=np.zeros((2, 6), int),
    )
    config = EvalConfig(
        batch_size=1,
        transforms=TransformConfig(det_train_sizes=(32,), det_eval_size=32, det_max_size=64),
        pad_to_multiple=1,
    )
    result = evaluate_task(OneQueryTwoClassesModel(), [sample], Task.FOV_MORPHOLOGY, config)
    assert result.details["cells_with_attributes"] == 2
    assert result.details["cells_matched"] == 1
    assert result.value == pytest.approx(0.5)


class QueueDetector(nn.Module):
    """Returns, batch after batch, the ground truth of the samples it was given, in the model's output
    convention (cxcywh normalised to each unpadded image): an oracle for the coordinate frames."""

    def __init__(self, samples, num_classes: int = 4, num_queries: int = 6):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.samples, self.num_classes, self.num_queries = list(samples), num_classes, num_queries

    def forward(self, images, task, prompts=None, targets=None, image_mask=None):
        batch = [self.samples.pop(0) for _ in range(images.shape[0])]
        logits = torch.full((len(batch), self.num_queries, self.num_classes), -10.0)
        boxes = torch.full((len(batch), self.num_queries, 4), 0.5)
        for i, sample in enumerate(batch):
            height, width = sample.image_size
            xyxy = torch.as_tensor(sample.boxes) / torch.tensor([width, height, width, height])
            n = len(xyxy)
            boxes[i, :n] = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1)
            logits[i, torch.arange(n), torch.as_tensor(sample.box_labels)] = 10.0
        return DetectionOutput(logits, boxes)


def test_detection_coordinate_frames_round_trip_on_padded_batches():
    # Images of different sizes and aspect ratios share a padded batch and are resized by the detection
    # pipeline; the oracle's boxes must score mAP 1 in original-image pixels.
    samples = []
    for i, (height, width) in enumerate([(60, 90), (90, 60), (48, 48)]):
        boxes = np.array([[5, 8, 25, 30], [width - 20, height - 25, width - 2, height - 3]], np.float32)
        samples.append(
            Sample(
                ArrayImage(np.full((height, width, 3), 128, np.uint8)), Task.DETECTION, "t", f"d{i}",
                prompt="p", boxes=boxes, box_labels=np.array([1, 3]), image_size=(height, width),
            )
        )  # fmt: skip
    config = EvalConfig(
        batch_size=3,
        transforms=TransformConfig(det_train_sizes=(64,), det_eval_size=64, det_max_size=80),
        pad_to_multiple=32,
    )
    result = evaluate_task(QueueDetector(samples), samples, Task.DETECTION, config)
    assert result.value == pytest.approx(1.0)
    # Shifted by a quarter of each box, the same oracle falls below IoU 0.5 on some boxes.
    shifted = [
        Sample(s.image, s.task, s.dataset, s.sample_id, prompt="p", boxes=s.boxes + 9.0,
               box_labels=s.box_labels, image_size=s.image_size)
        for s in samples
    ]  # fmt: skip
    assert evaluate_task(QueueDetector(shifted), samples, Task.DETECTION, config).value < 0.9


class LookingModel(ConstantModel):
    """Answers with the mean brightness of its image: right only when the image is the question's own."""

    def generate_text(self, images, prompts, image_mask=None, num_beams=1, max_new_tokens=32):
        return [f"level {int(round(float(im.mean()) * 10))}" for im in images]


def test_shuffled_images_separate_a_model_that_looks_from_one_that_does_not():
    levels = [20, 60, 100, 140, 180, 220]
    samples = [
        Sample(
            ArrayImage(np.full((32, 32, 3), v, np.uint8)),
            Task.VQA,
            "t",
            f"q{i}",
            prompt="Q: level?",
            text_target="?",
        )
        for i, v in enumerate(levels)
    ]
    looking = LookingModel()
    expected = looking.generate_text(
        torch.stack([evaluate_image(s) for s in samples]), ["Q: level?"] * len(samples)
    )
    samples = [
        Sample(s.image, s.task, s.dataset, s.sample_id, prompt=s.prompt, text_target=answer)
        for s, answer in zip(samples, expected)
    ]
    seeing = evaluate_task(looking, samples, Task.VQA, SMALL).details
    assert seeing["exact_match"] == 1.0
    assert seeing["exact_match_shuffled_images"] == 0.0 and seeing["answers_changed_by_shuffling"] == 1.0
    blind = evaluate_task(ConstantModel(), samples, Task.VQA, SMALL).details
    assert blind["exact_match"] == blind["exact_match_shuffled_images"]
    assert blind["answers_changed_by_shuffling"] == 0.0


class ClassLookingModel(LookingModel):
    """Looks at its image for "what type of cell" questions only; answers every other one the same."""

    def generate_text(self, images, prompts, image_mask=None, num_beams=1, max_new_tokens=32):
        looked = super().generate_text(images, prompts, image_mask, num_beams, max_new_tokens)
        return [a if "type of cell" in p else "same" for a, p in zip(looked, prompts)]


def test_exact_match_by_question_shows_which_questions_look_at_the_cell():
    levels = [20, 60, 100, 140, 180, 220]
    prompts = ["Q: What type of cell is this?", "Q: What is the size of the cell?", "Q: Is it odd?"]
    samples = [
        Sample(ArrayImage(np.full((32, 32, 3), v, np.uint8)), Task.VQA, "t", f"q{i}-{j}", prompt=p,
               text_target="?")
        for i, v in enumerate(levels) for j, p in enumerate(prompts)
    ]  # fmt: skip
    model = ClassLookingModel()
    expected = model.generate_text(
        torch.stack([evaluate_image(s) for s in samples]), [s.prompt for s in samples]
    )
    samples = [
        Sample(s.image, s.task, s.dataset, s.sample_id, prompt=s.prompt, text_target=answer)
        for s, answer in zip(samples, expected)
    ]
    rows = evaluate_task(model, samples, Task.VQA, SMALL).details["exact_match_by_question"]
    by_topic = {(r["topic"], r["form"]): r for r in rows}
    assert set(by_topic) == {("class", "open"), ("cell_size", "open"), ("other", "other")}
    assert all(r["questions"] == len(levels) for r in rows)
    # Shuffled, a class question mostly gets an image of another level (its own level is in 3 of 18).
    assert by_topic["class", "open"]["exact_match"] == 1.0
    assert by_topic["class", "open"]["exact_match_shuffled_images"] < 1.0
    for key in (("cell_size", "open"), ("other", "other")):
        assert by_topic[key]["exact_match"] == by_topic[key]["exact_match_shuffled_images"] == 1.0


def evaluate_image(sample):
    """The normalised tensor the evaluation pipeline feeds the model for ``sample``."""
    from unihema.data.loader import build_loader

    batch = next(iter(build_loader([sample], Task.VQA, batch_size=1, train=False,
                                   transform_config=SMALL.transforms)))  # fmt: skip
    return batch["images"][0]


class GroundedModel(nn.Module):
    """Reads its image's brightness level, looks up that cell, and answers the question about it
    exactly (``template_answer``): perfect grounding."""

    def __init__(self, cells_by_level):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))  # the evaluator reads the device from a parameter
        self.cells_by_level = cells_by_level

    def generate_text(self, images, prompts, image_mask=None, num_beams=1, max_new_tokens=32):
        from unihema.data.text import template_answer

        answers = []
        for image, prompt in zip(images, prompts):
            cls, attributes = self.cells_by_level[int(round(float(image.mean()) * 10))]
            answers.append(template_answer(prompt, cls, attributes) or "-")
        return answers


def test_a_perfectly_grounded_model_scores_the_grounded_ceiling_with_shuffled_images():
    from unihema.data.text import text_samples
    from unihema.data.vocab import CELL_ATTRIBUTES, CELL_CLASSES, cell_index

    values = dict(CELL_ATTRIBUTES)
    cells = [("neutrophil", "segmented-bilobed", "big"), ("lymphocyte", "unsegmented-round", "small"),
             ("monocyte", "unsegmented-indented", "big"), ("lymphocyte", "unsegmented-round", "big")]  # fmt: skip
    samples, cells_by_level = [], {}
    for i, (cls, nucleus, size) in enumerate(cells):
        attributes = [-1] * len(CELL_ATTRIBUTES)
        attributes[0] = values["cell_size"].index(size)
        attributes[2] = values["nucleus_shape"].index(nucleus)
        pixels = np.full((32, 32, 3), 20 + 50 * i, np.uint8)
        crop = Sample(ArrayImage(pixels), Task.CELL_MORPHOLOGY, "t", f"c{i}", cell_class=cell_index(cls),
                      cell_attributes=np.asarray(attributes))  # fmt: skip
        questions = [s for s in text_samples(crop, seed=i) if s.task is Task.VQA]
        level = int(round(float(evaluate_image(questions[0]).mean()) * 10))
        cells_by_level[level] = (CELL_CLASSES[cell_index(cls)], {"cell_size": size, "nucleus_shape": nucleus})
        samples += questions
    details = evaluate_task(GroundedModel(cells_by_level), samples, Task.VQA, SMALL).details
    assert details["exact_match"] == 1.0
    # Shuffled, its answers are right exactly where the donor cell gives the same answer.
    assert details["exact_match_shuffled_images"] == pytest.approx(details["exact_match_shuffled_grounded"])
    assert 0.0 < details["exact_match_shuffled_grounded"] < 1.0
    rows = details["exact_match_by_question"]
    assert all(
        r["exact_match_shuffled_images"] == pytest.approx(r["exact_match_shuffled_grounded"]) for r in rows
    )
    # Questions outside the templates have no ceiling.
    foreign = [
        Sample(s.image, s.task, s.dataset, s.sample_id, prompt="Q: level?", text_target="?") for s in samples
    ]
    assert (
        "exact_match_shuffled_grounded"
        not in evaluate_task(GroundedModel(cells_by_level), foreign, Task.VQA, SMALL).details
    )


def test_shuffled_images_is_a_derangement():
    from unihema.evaluate.evaluator import shuffled_images

    samples = [
        Sample(ArrayImage(np.full((4, 4, 3), i, np.uint8)), Task.VQA, "t", f"q{i}", prompt=f"Q{i}")
        for i in range(7)
    ]
    paired = shuffled_images(samples, seed=3)
    assert [p.prompt for p in paired] == [s.prompt for s in samples]
    donors = [int(p.image.load().getpixel((0, 0))[0]) for p in paired]
    assert sorted(donors) == list(range(7)) and all(d != i for i, d in enumerate(donors))


class BrightnessMaskModel(nn.Module):
    """Segments the pixels brighter than the image mean: a prediction that differs from image to image."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, images, task, prompts=None, targets=None, image_mask=None):
        grey = images.mean(dim=1, keepdim=True)
        logits = (grey - grey.mean(dim=(-2, -1), keepdim=True)) * 50
        return SegmentationOutput(masks=logits, masks_lowres=logits[..., ::8, ::8])


def _segmentation_samples():
    samples = []
    for i in range(3):
        pixels = np.full((32, 32, 3), 60, np.uint8)
        pixels[: 8 * (i + 1), : 10 + 5 * i] = 200  # the bright block grows from image to image
        truth = np.zeros((32, 32), bool)
        truth[: 8 * (i + 1), :16] = True
        samples.append(Sample(ArrayImage(pixels), Task.SEGMENTATION, "t", f"s{i}", mask=ArrayMask(truth)))
    return samples


def test_dice_and_iou_per_image_do_not_depend_on_the_batch_size():
    samples = _segmentation_samples()
    one, three = (
        evaluate_task(BrightnessMaskModel(), samples, Task.SEGMENTATION,
                      EvalConfig(batch_size=size, transforms=SMALL.transforms, pad_to_multiple=1))
        for size in (1, 3)
    )  # fmt: skip
    assert one.artifacts["per_image"] == three.artifacts["per_image"]
    dice = [image["dice"] for image in one.artifacts["per_image"]]
    # Image 0: 8 x 10 predicted inside 8 x 16 true -> Dice 2 * 80 / (80 + 128), IoU 80 / 128.
    assert dice[0] == pytest.approx(2 * 80 / 208) and one.artifacts["per_image"][0]["iou"] == pytest.approx(
        80 / 128
    )
    assert len(set(dice)) == 3 and one.value == pytest.approx(np.mean(dice))
    assert one.details["IoU"] == pytest.approx(
        np.mean([image["iou"] for image in one.artifacts["per_image"]])
    )
    overlay = one.artifacts["overlays"][0]
    assert overlay["image"].shape == (32, 32, 3) and overlay["image"].dtype == np.uint8
    assert overlay["image"][0, 0].tolist() == [200, 200, 200] and overlay["predicted"].shape == (32, 32)


def test_an_unreadable_sample_is_named_and_skipped(tmp_path):
    from unihema.data.schema import FileImage

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    samples = _segmentation_samples()
    samples.insert(1, Sample(FileImage(broken), Task.SEGMENTATION, "t", "broken",
                             mask=ArrayMask(np.zeros((32, 32), bool))))  # fmt: skip
    seen = []
    result = evaluate_task(BrightnessMaskModel(), samples, Task.SEGMENTATION, SMALL, progress=seen.append)
    assert sum(seen) == 4 and result.evaluated == 3 and result.details["images"] == 3
    assert [s["sample"] for s in result.skipped] == ["t/broken"]
    assert (
        result.skipped[0]["reason"].startswith("UnreadableImageError")
        and "broken.png" in result.skipped[0]["reason"]
    )
    with pytest.raises(
        ValueError, match="none of the 1 segmentation samples could be loaded; first: t/broken"
    ):
        evaluate_task(BrightnessMaskModel(), samples[1:2], Task.SEGMENTATION, SMALL)


def test_fov_cells_are_the_detections_at_the_operating_score_threshold():
    boxes = np.array([[0, 0, 16, 32], [0, 1, 16, 32]], dtype=np.float32)
    sample = Sample(_image(), Task.FOV_MORPHOLOGY, "t", "f0", boxes=boxes, box_labels=[3, 4],
                    box_attributes=np.zeros((2, 6), int))  # fmt: skip
    transforms = TransformConfig(det_train_sizes=(32,), det_eval_size=32, det_max_size=64)
    # Query 0 scores sigmoid(5) = 0.993: a cell at the default threshold (0.3), not at 0.999.
    strict = EvalConfig(batch_size=1, transforms=transforms, pad_to_multiple=1, score_threshold=0.999)
    result = evaluate_task(OneQueryTwoClassesModel(), [sample], Task.FOV_MORPHOLOGY, strict)
    assert result.details["cells_matched"] == 0 and result.value == 0.0
    assert result.details["mAP50"] > 0  # mAP still scores every kept detection
    with pytest.raises(ValueError, match="score_threshold"):
        EvalConfig(score_threshold=1.5)


def test_detection_reports_per_class_ap_and_pr_curves_in_class_names():
    from unihema.data.vocab import DETECTION_CLASSES

    samples = [
        Sample(ArrayImage(np.full((48, 48, 3), 128, np.uint8)), Task.DETECTION, "t", "d0", prompt="p",
               boxes=np.array([[5, 8, 25, 30]], np.float32), box_labels=np.array([1]), image_size=(48, 48))
    ]  # fmt: skip
    transforms = TransformConfig(det_train_sizes=(64,), det_eval_size=64, det_max_size=80)
    config = EvalConfig(batch_size=1, transforms=transforms, max_detections=7)
    result = evaluate_task(QueueDetector(samples), samples, Task.DETECTION, config)
    name = DETECTION_CLASSES[1]
    assert result.details["AP50_per_class"] == {name: pytest.approx(1.0)}
    assert result.details["max_detections"] == 7
    curve = result.artifacts["pr_curves"][name]
    assert len(curve["recall"]) == len(curve["precision"]) == 101 and curve["AP50"] == pytest.approx(1.0)


def test_classification_confusion_matrix_and_text_details():
    from unihema.data.vocab import CELL_CLASSES

    samples = [
        Sample(_image(), Task.CLASSIFICATION, "t", f"c{i}", cell_class=c) for i, c in enumerate([3, 5])
    ]
    result = evaluate_task(ConstantModel(), samples, Task.CLASSIFICATION, SMALL)
    matrix = result.artifacts["confusion_matrix"]
    assert matrix["labels"] == [CELL_CLASSES[3], CELL_CLASSES[5]] and matrix["matrix"] == [[1, 0], [1, 0]]
    text = [
        Sample(
            _image(), Task.MLM, "t", "m0", prompt="Q: the nucleus is round", text_target="the nucleus is oval"
        )
    ]
    details = evaluate_task(ConstantModel(), text, Task.MLM, SMALL).details
    assert details["ROUGE_L"] == pytest.approx(0.75) and details["exact_match"] == 0.0
    assert details["one_word_references"] == 0.0 and details["BLEU4_words"] > 0


def test_classification_predicts_among_the_dataset_classes_and_reports_both():
    import dataclasses

    # The model's favourite class 3 is one this dataset never labels: restricted to its classes 5 and 7,
    # the best of those (a tie at logit 0, the first) is the prediction.
    samples = [
        Sample(_image(), Task.CLASSIFICATION, "t", f"c{i}", cell_class=c) for i, c in enumerate([5, 5, 7])
    ]
    restricted = dataclasses.replace(SMALL, cell_classes=(5, 7))
    details = evaluate_task(ConstantModel(), samples, Task.CLASSIFICATION, restricted).details
    assert details["accuracy"] == pytest.approx(2 / 3) and details["accuracy_any_class"] == 0.0
    assert details["classes_scored"] == 2
    anywhere = evaluate_task(ConstantModel(), samples, Task.CLASSIFICATION, SMALL).details
    assert anywhere["accuracy"] == 0.0 and anywhere["classes_scored"] == 50  # the model's logits
    with pytest.raises(ValueError, match=r"EvalConfig.cell_classes must be indices into CELL_CLASSES"):
        EvalConfig(cell_classes=(3, 10_000))
