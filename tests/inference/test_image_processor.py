import numpy as np
import pytest
import torch
from PIL import Image

from unihema.data.transforms import TransformConfig
from unihema.inference.image_processor import ImageInputError, ImageProcessor, load_image
from unihema.inference.preprocessor import PreprocessorConfig

PROCESSOR = ImageProcessor(
    PreprocessorConfig(
        TransformConfig(det_train_sizes=(64,), det_eval_size=64, det_max_size=100, seg_size=48)
    )
)


@pytest.mark.parametrize(
    "array",
    [
        np.full((5, 7), 200, np.uint8),  # grey
        np.full((5, 7, 1), 200, np.uint8),
        np.full((5, 7, 4), 200, np.uint8),  # RGBA: alpha dropped
        np.full((5, 7, 3), 200 * 257, np.uint16),
        np.full((5, 7, 3), 200 / 255, np.float32),
    ],
)
def test_arrays_of_every_layout_become_the_same_rgb(array: np.ndarray) -> None:
    loaded = load_image(array)
    assert loaded.pixels.shape == (5, 7, 3) and loaded.pixels.dtype == np.uint8
    assert (loaded.pixels == 200).all() and loaded.size == (5, 7)


def test_pil_modes_and_16_bit_files(tmp_path) -> None:
    assert load_image(Image.new("P", (4, 3))).pixels.shape == (3, 4, 3)
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((3, 4), 51400, np.uint16)).save(path)
    assert (load_image(path).pixels == 200).all()


def test_batches_resize_per_task_and_pad_to_the_multiple() -> None:
    batch = PROCESSOR([np.zeros((30, 60, 3), np.uint8), np.zeros((40, 40, 3), np.uint8)], "detection")
    # Shorter side to 64, longer capped at 100: 30x60 -> 50x100 (the cap wins), 40x40 -> 64x64.
    assert batch.input_sizes == [(50, 100), (64, 64)] and batch.original_sizes == [(30, 60), (40, 40)]
    assert batch.pixel_values.shape == (2, 3, 64, 128)  # padded to the multiple of 32
    assert batch.image_mask[0, 50:].all() and not batch.image_mask[0, :50, :100].any()
    assert PROCESSOR.input_size("detection", (30, 60)) == (50, 100)
    assert PROCESSOR.input_size("segmentation", (30, 60)) == (48, 48)
    # Normalised with the ImageNet statistics: a black pixel is -mean/std.
    torch.testing.assert_close(batch.pixel_values[0, 0, 0, 0], torch.tensor(-0.485 / 0.229))


def test_boxes_map_back_to_original_pixels() -> None:
    boxes = torch.tensor([[10.0, 5.0, 50.0, 25.0]])  # in the 50x100 input of a 30x60 image
    original = ImageProcessor.boxes_to_original(boxes, (50, 100), (30, 60))
    torch.testing.assert_close(original, torch.tensor([[6.0, 3.0, 30.0, 15.0]]))


def test_unreadable_inputs_are_named() -> None:
    with pytest.raises(ImageInputError, match=r"expected an \(H, W\)"):
        load_image(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ImageInputError, match="unsupported pixel type int64"):
        load_image(np.zeros((2, 2, 3), np.int64))
    with pytest.raises(ImageInputError, match="expected a path, a PIL image or a numpy array, got list"):
        load_image([1, 2])
