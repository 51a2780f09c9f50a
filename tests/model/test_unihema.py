from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from support.paths import REFERENCE_ROOT, reference_file
from support.testers import IMAGE_SIZE, PROMPTS, detection_targets, small_test_config, text_targets
from unihema.data.schema import Task
from unihema.data.vocab import CELL_CLASSES, DETECTION_CLASSES
from unihema.model.configuration import MODULE_GROUPS
from unihema.model.outputs import CellOutput, DenoisingMeta, DetectionOutput, SegmentationOutput, TextOutput
from unihema.model.persistence import WEIGHTS_NAME, CheckpointError
from unihema.model.unihema import UniHema

Q = 20  # small_test_config num_queries
LAYERS = 2  # small_test_config decoder layers
UPSTREAM_STATE_DICT = REFERENCE_ROOT / "upstream-state-dict.tsv"

# Module groups each task must train (and no others).
EXPECTED_GROUPS = {
    Task.DETECTION: {"B", "E_I", "D_I", "E_T", "TGVR"},
    Task.FOV_MORPHOLOGY: {"B", "E_I", "D_I", "E_T", "TGVR", "heads"},
    Task.SEGMENTATION: {"B", "E_I", "D_I", "E_T", "TGVR", "QGMF"},
    Task.CLASSIFICATION: {"B", "E_I", "SCFE", "heads"},
    Task.CELL_MORPHOLOGY: {"B", "E_I", "SCFE", "heads"},
    Task.VQA: {"B", "E_T", "D_T", "CMF"},
    Task.MLM: {"B", "E_T", "D_T", "CMF"},
}


@pytest.fixture(scope="module")
def model() -> UniHema:
    torch.manual_seed(0)
    return UniHema.from_config(small_test_config())


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


def _targets(task: Task) -> list[dict] | None:
    if task.has_boxes:
        return detection_targets()
    if task.is_text:
        return text_targets()
    return None


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, DenoisingMeta):
        return []
    if dataclasses.is_dataclass(value):
        return [t for f in dataclasses.fields(value) for t in _tensors(getattr(value, f.name))]
    if isinstance(value, list):
        return [t for v in value for t in _tensors(v)]
    return []


def test_output_shapes_per_task(model: UniHema, images: torch.Tensor) -> None:
    model.eval()
    c = len(DETECTION_CLASSES)
    with torch.no_grad():
        det = model(images, "detection", PROMPTS)
        assert isinstance(det, DetectionOutput)
        assert det.logits.shape == (2, Q, c) and det.boxes.shape == (2, Q, 4)
        assert len(det.aux) == LAYERS - 1 and det.aux[0].boxes.shape == (2, Q, 4)
        assert det.encoder.logits.shape == (2, Q, c) and det.hidden_states.shape[:2] == (2, Q)
        assert det.attributes is None and det.denoising is None
        assert ((det.boxes >= 0) & (det.boxes <= 1)).all()
        assert [layer.boxes.shape for layer in det.layers()] == [(2, Q, 4)] * LAYERS

        fov = model(images, Task.FOV_MORPHOLOGY, PROMPTS)
        assert fov.attributes.shape == (2, Q, 12)
        assert fov.aux[0].attributes.shape == (2, Q, 12)

        seg = model(images[:, :, :, :48], "segmentation", PROMPTS)
        assert isinstance(seg, SegmentationOutput)
        assert seg.masks.shape == (2, 1, IMAGE_SIZE, 48)
        assert seg.masks_lowres.shape == (2, 1, IMAGE_SIZE // 8, 48 // 8)

        for task in ("classification", "cell_morphology"):
            cell = model(images, task)  # no prompts needed
            assert isinstance(cell, CellOutput) and cell.features.shape == (2, 32)
            assert cell.class_logits.shape == (2, len(CELL_CLASSES))
            assert cell.attribute_logits.shape == (2, model.cell_attribute_head.num_logits)

        vqa = model(images, "vqa", PROMPTS, targets=text_targets())
        assert isinstance(vqa, TextOutput)
        assert vqa.logits.shape == (*vqa.labels.shape, model.config.text.vocab_size)
        assert vqa.memory.shape[:2] == vqa.memory_mask.shape
        mlm = model(images, "mlm", PROMPTS)
        assert mlm.logits is None and mlm.labels is None


def test_shared_pass_equals_each_task_alone(model: UniHema, images: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        shared = model.forward_fields(images, PROMPTS)
        detection = model(images, "detection", PROMPTS)
        fov = model(images, "fov_morphology", PROMPTS)
        segmentation = model(images, "segmentation", PROMPTS)
        only_masks = model.forward_fields(images, PROMPTS, tasks=["segmentation"])
    torch.testing.assert_close(shared.detection.logits, detection.logits)
    torch.testing.assert_close(shared.detection.boxes, fov.boxes)
    torch.testing.assert_close(shared.detection.attributes, fov.attributes)
    torch.testing.assert_close(shared.segmentation.masks, segmentation.masks)
    assert only_masks.detection is None and only_masks.segmentation is not None
    with pytest.raises(ValueError, match="forward_fields"):
        model.forward_fields(images, PROMPTS, tasks=["vqa"])


def test_text_logits_give_the_token_cross_entropy(model: UniHema, images: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        out = model(images, "vqa", PROMPTS, targets=text_targets())
        reference = model.text.t5(
            encoder_outputs=(out.memory,), attention_mask=out.memory_mask, labels=out.labels
        ).loss
    ours = torch.nn.functional.cross_entropy(
        out.logits.flatten(0, 1), out.labels.flatten(), ignore_index=-100
    )
    torch.testing.assert_close(ours, reference)


def test_fixed_mask_size_option(images: torch.Tensor) -> None:
    model = UniHema.from_config(small_test_config(hemaformer={"qgmf_mask_size": 40})).eval()
    with torch.no_grad():
        assert model(images, "segmentation", PROMPTS).masks.shape == (2, 1, 40, 40)


def test_denoising_only_in_training_with_targets(model: UniHema, images: torch.Tensor) -> None:
    model.train()
    out = model(images, "fov_morphology", PROMPTS, targets=detection_targets())
    dn = out.denoising
    qdn = dn.logits.shape[1]
    assert qdn > 0 and dn.boxes.shape == (2, qdn, 4) and dn.attributes.shape == (2, qdn, 12)
    assert len(dn.aux) == LAYERS - 1
    assert dn.meta.pad_size == qdn
    assert out.logits.shape == (2, Q, len(DETECTION_CLASSES))
    assert model(images, "detection", PROMPTS).denoising is None
    model.eval()
    assert model(images, "detection", PROMPTS, targets=detection_targets()).denoising is None


@pytest.mark.parametrize("task", list(Task))
def test_gradients_reach_exactly_the_task_groups(model: UniHema, images: torch.Tensor, task: Task) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(images, task, PROMPTS, targets=_targets(task))
    loss = sum(t.float().mean() for t in _tensors(out))
    loss.backward()
    reached = {
        name
        for name, group in model.module_groups().items()
        if any(p.grad is not None and p.grad.abs().sum() > 0 for p in group.parameters())
    }
    assert reached == EXPECTED_GROUPS[task]
    model.zero_grad(set_to_none=True)


def test_module_groups_partition_the_parameters(model: UniHema) -> None:
    groups = model.module_groups()
    assert tuple(groups) == MODULE_GROUPS
    owners: dict[int, str] = {}
    for name, group in groups.items():
        for p in group.parameters():
            assert id(p) not in owners, f"parameter in {owners[id(p)]} and {name}"
            owners[id(p)] = name
    assert set(owners) == {id(p) for p in model.parameters()}


def test_image_changes_the_answer(model: UniHema, images: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        a = model(images, "vqa", PROMPTS, targets=text_targets())
        b = model(images.flip(-1) + 0.5, "vqa", PROMPTS, targets=text_targets())
    assert not torch.allclose(a.logits, b.logits)
    # Generation reads the same fused states: its first greedy token is the argmax of the first
    # teacher-forced step (both start from the decoder start token).
    generated = model.text.generate(a.memory, a.memory_mask, max_new_tokens=4)
    assert torch.equal(generated[:, 1], a.logits[:, 0].argmax(-1))
    assert model.generate_text(images, PROMPTS, max_new_tokens=4) == model.text.decode(generated)
    beams = model.generate_text(images, PROMPTS, num_beams=3, max_new_tokens=4)
    assert len(beams) == 2 and all(isinstance(s, str) for s in beams)


def test_bad_inputs(model: UniHema, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="detection"):
        model(images, "detection")
    with pytest.raises(ValueError, match="2 prompt"):
        model(images, "vqa", PROMPTS[:1])
    with pytest.raises(ValueError):
        model(images, "captioning", PROMPTS)
    with pytest.raises(ValueError, match="text"):
        model(images, "vqa", PROMPTS, targets=[{"text": "a"}, {}])


def test_image_mask_reaches_the_model(model: UniHema, images: torch.Tensor) -> None:
    model.eval()
    mask = torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    mask[0, :, 32:] = True  # right half of the first image is padding
    with torch.no_grad():
        masked = model(images, "classification", image_mask=mask).features
        plain = model(images, "classification").features
    assert not torch.allclose(masked[0], plain[0])
    torch.testing.assert_close(masked[1], plain[1])


def test_bfloat16_autocast(model: UniHema, images: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for task in ("detection", "segmentation", "classification", "vqa"):
            out = model(images, task, PROMPTS, targets=text_targets() if task == "vqa" else None)
            assert all(torch.isfinite(t.float()).all() for t in _tensors(out)), task


def test_save_load_round_trip_is_bit_exact(model: UniHema, images: torch.Tensor, tmp_path: Path) -> None:
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} >= {
        "model.safetensors",
        "config.json",
        "tokenizer",
    }
    loaded = UniHema.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    reference, restored = model.state_dict(), loaded.state_dict()
    assert reference.keys() == restored.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, restored[name]), name
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    with torch.no_grad():
        for task in ("segmentation", "vqa"):
            kwargs = {"targets": text_targets()} if task == "vqa" else {}
            a, b = model(images, task, PROMPTS, **kwargs), loaded(images, task, PROMPTS, **kwargs)
            for x, y in zip(_tensors(a), _tensors(b)):
                assert torch.equal(x, y), task
    # Shared T5 embeddings are stored once.
    stored = load_file(str(tmp_path / "ckpt" / WEIGHTS_NAME))
    assert "text.t5.shared.weight" in stored and "text.t5.encoder.embed_tokens.weight" not in stored


def test_checkpoint_errors_name_file_and_tensor(model: UniHema, tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    model.save_pretrained(directory)
    weights = directory / WEIGHTS_NAME
    original = weights.read_bytes()

    config = json.loads((directory / "config.json").read_text())
    config["vision"]["num_queries"] = 30
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: tensor 'image_decoder\.tgt_embed\.weight' has shape"
    ):
        UniHema.from_pretrained(directory)
    config["vision"]["num_queries"] = 20
    (directory / "config.json").write_text(json.dumps(config))

    state = load_file(str(weights))
    metadata = {"format": "unihema", "aliases": json.dumps({"text.t5.encoder.embed_tokens.weight": "text.t5.shared.weight",
                                                            "text.t5.decoder.embed_tokens.weight": "text.t5.shared.weight"})}  # fmt: skip
    missing = dict(state)
    del missing["scfe.query"]
    save_file(missing, str(weights), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"'scfe\.query' is missing"):
        UniHema.from_pretrained(directory)

    save_file({**state, "extra.weight": torch.zeros(2)}, str(weights), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"'extra\.weight' in the checkpoint is not part"):
        UniHema.from_pretrained(directory)

    weights.write_bytes(original[: len(original) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        UniHema.from_pretrained(directory)
    weights.write_bytes(original[:5])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        UniHema.from_pretrained(directory)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        UniHema.from_pretrained(directory)


def test_pretrained_text_model_round_trip(tmp_path: Path, images: torch.Tensor) -> None:
    source = UniHema.from_config(small_test_config())
    source.text.t5.save_pretrained(tmp_path / "t5")
    source.tokenizer.save_pretrained(str(tmp_path / "t5"))
    model = UniHema.from_config(small_test_config(text={"pretrained_path": str(tmp_path / "t5")})).eval()
    assert torch.equal(model.text.t5.shared.weight, source.text.t5.shared.weight)
    model.save_pretrained(tmp_path / "ckpt")
    for path in sorted((tmp_path / "t5").iterdir()):
        path.unlink()  # the saved model must not need the pretrained directory any more
    loaded = UniHema.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config.text.pretrained_path is None
    with torch.no_grad():
        assert torch.equal(model(images, "vqa", PROMPTS).memory, loaded(images, "vqa", PROMPTS).memory)


def test_paper_preset_builds_on_meta_and_mirrors_upstream_shapes() -> None:
    with torch.device("meta"):
        model = UniHema.from_preset("paper")
    groups = model.module_groups()
    counts = {name: sum(p.numel() for p in group.parameters()) for name, group in groups.items()}
    assert counts["E_T"] + counts["D_T"] == 247_577_856  # flan-t5-base
    assert 45e6 < sum(counts.values()) - counts["E_T"] - counts["D_T"] < 60e6  # upstream vision: 54.5M
    state = model.state_dict()
    assert state["image_decoder.tgt_embed.weight"].shape == (900, 256)
    assert state["cmf.queries"].shape == (64, 256)
    assert state["cmf.txt_proj.weight"].shape == (256, 768) and state["cmf.out_proj.weight"].shape == (
        768,
        256,
    )
    assert state["tgvr.combined_proj.weight"].shape == (256, 512)
    assert state["scfe.proj.weight"].shape == (256, 512)
    reference_file(UPSTREAM_STATE_DICT.name)
    compared = 0
    for line in UPSTREAM_STATE_DICT.read_text().splitlines():
        if line.startswith("T5_model."):
            key, shape, _ = line.split("\t")
            ours = state["text.t5." + key.removeprefix("T5_model.")]
            assert "x".join(map(str, ours.shape)) == shape, key
            compared += 1
    assert compared == 284  # every T5 tensor of the authors' model


def test_text_memory_text_reads_the_t5_encoder_alone(model: UniHema, images: torch.Tensor) -> None:
    model.eval()
    other = torch.randn_like(images)
    with torch.no_grad():
        plain = model(images, "vqa", PROMPTS, targets=text_targets(), text_memory="text")
        swapped = model(other, "vqa", PROMPTS, targets=text_targets(), text_memory="text")
        fused = model(images, "vqa", PROMPTS, targets=text_targets())
        fused_other = model(other, "vqa", PROMPTS, targets=text_targets())
        ids, mask = model.text.tokenize(PROMPTS, images.device)
        encoder_states = model.text.encode(ids, mask)
    # The decoder's memory is E_E^T itself, and the image does not matter; through CMF it does.
    torch.testing.assert_close(plain.memory, encoder_states)
    torch.testing.assert_close(plain.logits, swapped.logits)
    assert not torch.allclose(fused.logits, fused_other.logits)
    assert model.generate_text(images, PROMPTS, max_new_tokens=4, text_memory="text") == model.generate_text(
        other, PROMPTS, max_new_tokens=4, text_memory="text"
    )


def test_text_memory_is_checked(model: UniHema, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="text_memory must be one of"):
        model(images, "vqa", PROMPTS, text_memory="image")
    with pytest.raises(ValueError, match="vqa and mlm only, not 'detection'"):
        model(images, "detection", PROMPTS, text_memory="text")


def test_a_precomputed_image_memory_gives_the_answers_of_the_images(
    model: UniHema, images: torch.Tensor
) -> None:
    model.eval()
    other = torch.randn_like(images)
    with torch.no_grad():
        direct = model(images, "vqa", PROMPTS, targets=text_targets())
        memory = model.image_memory(images)
        cached = model(other, "vqa", PROMPTS, targets=text_targets(), image_memory=memory)
        halves = [model(images[i : i + 1], "vqa", PROMPTS[i : i + 1], targets=text_targets()[i : i + 1],
                        image_memory=memory[i : i + 1]) for i in range(len(PROMPTS))]  # fmt: skip
    # The memory stands for the images it was computed from: the pixels passed beside it are not read.
    torch.testing.assert_close(cached.logits, direct.logits)
    for row, alone in enumerate(halves):  # one row of the memory answers for its own image
        length = alone.logits.shape[1]
        torch.testing.assert_close(alone.logits[0], direct.logits[row, :length], rtol=1e-4, atol=1e-4)
    assert memory.tokens.shape[:2] == memory.padding.shape and len(memory) == images.shape[0]


def test_image_memory_is_checked(model: UniHema, images: torch.Tensor) -> None:
    memory = model.image_memory(images)
    with pytest.raises(ValueError, match="applies to vqa and mlm with text_memory='fused', not 'detection'"):
        model(images, "detection", PROMPTS, image_memory=memory)
    with pytest.raises(ValueError, match="text_memory='text'"):
        model(images, "vqa", PROMPTS, text_memory="text", image_memory=memory)
    with pytest.raises(ValueError, match=f"image_memory holds 1 images, the batch {images.shape[0]}"):
        model(images, "vqa", PROMPTS, image_memory=memory[:1])


def test_precomputed_cell_inputs_give_the_cell_outputs_of_the_crops(
    model: UniHema, images: torch.Tensor
) -> None:
    model.eval()
    with torch.no_grad():
        direct = model(images, "classification")
        inputs = model.cell_inputs(images)
        # The inputs stand for the crops they were computed from: the pixels passed beside them are unread.
        cached = model(torch.randn_like(images), "classification", cell_inputs=inputs)
        morphology = model(torch.zeros_like(images), "cell_morphology", cell_inputs=inputs)
        last = model(images[1:], "classification", cell_inputs=inputs[1:])
    torch.testing.assert_close(cached.class_logits, direct.class_logits)
    torch.testing.assert_close(morphology.attribute_logits, direct.attribute_logits)
    torch.testing.assert_close(last.class_logits, direct.class_logits[1:], rtol=1e-4, atol=1e-4)
    assert len(inputs) == images.shape[0] and inputs.memory.shape[:2] == inputs.memory_padding.shape


def test_cell_inputs_are_checked(model: UniHema, images: torch.Tensor) -> None:
    inputs = model.cell_inputs(images)
    with pytest.raises(ValueError, match="apply to classification and cell_morphology, not 'segmentation'"):
        model(images, "segmentation", PROMPTS, cell_inputs=inputs)
    with pytest.raises(ValueError, match=f"cell_inputs hold 1 crops, the batch {images.shape[0]}"):
        model(images, "classification", cell_inputs=inputs[:1])
