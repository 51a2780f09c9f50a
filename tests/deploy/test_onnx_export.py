"""ONNX export of the vision path: onnxruntime agrees with PyTorch per task, the CLI writes a valid file.

Tolerance: 1e-4 absolute on every output (``TOLERANCE``). Both run float32; onnxruntime fuses and reorders
the convolutions, matrix products and softmaxes, so sums accumulate in a different order. On these tiny
random models the largest difference is about 2e-6 (logits) and 1e-7 (boxes); 1e-4 leaves room for deeper
models without hiding a wrong graph (a wrong prompt, mask or level size changes outputs by far more).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from support.testers import SMALL_INPUTS, small_test_config
from unihema.cli import main
from unihema.deploy import compare_with_onnxruntime, example_inputs, export_onnx, export_pretrained
from unihema.deploy.onnx_export import (
    TOLERANCE,
    default_prompt,
    prompt_tokens,
    read_metadata,
    run_onnxruntime,
    trace_to_onnx,
)
from unihema.inference.preprocessor import PreprocessorConfig
from unihema.model.unihema import UniHema

EXPORTED_SIZES = {"detection": (96, 96), "segmentation": (64, 64), "classification": (32, 32)}


@pytest.fixture(scope="module")
def model() -> UniHema:
    torch.manual_seed(0)
    model = UniHema.from_config(small_test_config()).eval()
    model.preprocessor = SMALL_INPUTS
    return model


@pytest.fixture(scope="module")
def exported(model: UniHema, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    return {
        task: export_onnx(model, folder / f"{task}.onnx", task=task, fov_attributes=task == "detection").path
        for task in EXPORTED_SIZES
    }


def _assert_close(differences: dict[str, float], names: set[str]) -> None:
    assert set(differences) == names
    assert all(value <= TOLERANCE for value in differences.values()), differences


@pytest.mark.parametrize("task", list(EXPORTED_SIZES))
def test_onnxruntime_matches_pytorch_at_two_batch_sizes_and_with_padding(
    model: UniHema, exported: dict[str, Path], task: str
) -> None:
    outputs = {
        "detection": {"logits", "boxes", "attributes"},
        "segmentation": {"mask_logits"},
        "classification": {"class_logits", "attribute_logits"},
    }[task]
    height, width = EXPORTED_SIZES[task]
    # The batch is dynamic; the last image of the second batch is padded on the right, as a smaller
    # image is placed into the fixed canvas.
    for batch, padded_width, seed in ((2, 0, 1), (3, width // 4, 2), (1, 0, 3)):
        inputs = example_inputs(model, task, batch=batch, padded_width=padded_width, seed=seed)
        assert inputs["pixel_values"].shape == (batch, 3, height, width)
        _assert_close(compare_with_onnxruntime(model, exported[task], inputs), outputs)


def test_detection_outputs_shapes_and_the_prompt_is_an_input(
    model: UniHema, exported: dict[str, Path]
) -> None:
    inputs = example_inputs(model, "detection", batch=2, seed=4)
    got = run_onnxruntime(exported["detection"], inputs)
    queries, classes = model.config.vision.num_queries, model.config.heads.num_detection_classes
    assert got["logits"].shape == (2, queries, classes) and got["boxes"].shape == (2, queries, 4)
    assert got["attributes"].shape == (2, queries, sum(len(v) for _, v in model.box_attribute_head.schema))
    # The ids padded to text.max_length give what the model gives on the prompt strings (padded tokens are
    # masked), and another prompt changes the result: the text encoder runs inside the graph.
    prompts = [default_prompt("malaria"), default_prompt()]
    inputs["input_ids"], inputs["attention_mask"] = prompt_tokens(model, prompts)
    with torch.no_grad():
        expected = model.forward_fields(
            inputs["pixel_values"], prompts, ("detection", "fov_morphology"), inputs["image_mask"]
        ).detection
    other = run_onnxruntime(exported["detection"], inputs)
    assert np.abs(other["logits"] - expected.logits.numpy()).max() <= TOLERANCE
    assert np.abs(other["boxes"] - expected.boxes.numpy()).max() <= TOLERANCE
    assert np.abs(other["logits"][0] - got["logits"][0]).max() > 100 * TOLERANCE


def test_image_size_is_static_and_metadata_describes_the_inputs(
    model: UniHema, exported: dict[str, Path]
) -> None:
    inputs = example_inputs(model, "segmentation", batch=1, image_size=(96, 64))
    with pytest.raises(Exception, match="pixel_values"):
        run_onnxruntime(exported["segmentation"], inputs)
    metadata = read_metadata(exported["detection"])
    assert metadata["task"] == "detection" and json.loads(metadata["image_size"]) == [96, 96]
    ids = torch.tensor(json.loads(metadata["prompt_ids"]))
    assert ids.shape == (model.text.max_length,) and model.text.decode(ids[None])[0] == metadata["prompt"]
    assert json.loads(metadata["outputs"]) == ["logits", "boxes", "attributes"]
    assert PreprocessorConfig.from_dict(json.loads(metadata["preprocessor"])) == SMALL_INPUTS
    graph = onnx.load(str(exported["classification"]))
    assert [i.name for i in graph.graph.input] == ["pixel_values", "image_mask"]
    assert "classes" in read_metadata(exported["classification"])


def test_cli_writes_a_valid_file_at_a_chosen_size(model: UniHema, tmp_path: Path, capsys) -> None:
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "exports" / "detection.onnx"
    argv = ["export", "onnx", "--model", str(tmp_path / "model"), "--out", str(out), "--size", "64", "128"]
    assert main([*argv, "--opset", "18", "--check"]) == 0
    printed = capsys.readouterr().out
    assert "64x128" in printed and "largest |difference|" in printed
    graph = onnx.load(str(out))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version == 18
    shape = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert shape == ["batch", 3, 64, 128]


def test_clear_errors(model: UniHema, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-model"
    assert main(["export", "onnx", "--model", str(missing), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "model folder" in capsys.readouterr().err
    assert main(["export", "onnx", "--model", str(missing), "--out", "m.onnx", "--task", "vqa"]) == 2
    assert "generation" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot be exported"):
        export_pretrained(missing, tmp_path / "m.onnx", task="bogus")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", task="classification", opset=15)
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(model, tmp_path / "m.onnx", task="classification", image_size=(40, 32))
    with pytest.raises(ValueError, match="detection only"):
        export_onnx(model, tmp_path / "m.onnx", task="segmentation", fov_attributes=True)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("opset", [17, 18])
def test_group_norm_statistics_are_as_precise_as_pytorchs(tmp_path: Path, opset: int) -> None:
    # Large groups with a mean far from zero and a padded band: where one float32 pass loses ~1e-4.
    norm = torch.nn.GroupNorm(4, 16)
    torch.nn.init.normal_(norm.weight)
    images = torch.randn(2, 16, 192, 192, generator=torch.Generator().manual_seed(0)) * 3 + 5
    images[1, :, :, 144:] = 0.0
    path = tmp_path / "norm.onnx"
    trace_to_onnx(norm, (images,), path, opset, ("x",), ("y",))
    for batch in (images, images[1:]):
        got = torch.from_numpy(run_onnxruntime(path, {"x": batch})["y"])
        with torch.no_grad():
            exact = torch.nn.functional.group_norm(
                batch.double(), 4, norm.weight.double(), norm.bias.double(), norm.eps
            )
        assert (got.double() - exact).abs().max() < 2e-5
