"""Saving and loading UniHema models: ``model.safetensors`` + ``config.json`` + ``tokenizer/`` (+
``preprocessor_config.json``, the pre-processing the model was trained with).

Nothing is unpickled. Tensors that share storage (T5's token embedding appears as ``shared``,
``encoder.embed_tokens`` and ``decoder.embed_tokens``) are written once; the other names are recorded
as aliases in the safetensors metadata. Loading checks every tensor name and shape against the model
built from ``config.json`` and reports the first mismatch with the file name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unihema.atomic import atomic_write
from unihema.inference.preprocessor import PreprocessorConfig
from unihema.model.configuration import UniHemaConfig

if TYPE_CHECKING:
    from unihema.model.unihema import UniHema

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_DIR = "tokenizer"
ALIASES_KEY = "aliases"
FORMAT_KEY = "format"
FORMAT_VALUE = "unihema"
PRESET_KEY = "preset"
"""Metadata key of the weights file: the preset of the model that wrote it (named when a load mismatches)."""


class CheckpointError(ValueError):
    """A checkpoint file does not fit the model; the message names the file and the tensor."""


def _unique_state(model: torch.nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """State dict without storage-sharing duplicates, plus ``{alias: stored name}``."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, tensor in model.state_dict().items():
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
        )
        if tensor.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors, aliases


def _save_tokenizer(tokenizer: Any, target: Path) -> None:
    """Write the tokenizer files into a fresh folder, then swap it in place of ``target``."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        tokenizer.save_pretrained(str(staging))
        if target.exists():
            retired = target.with_name(f".{target.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_pretrained(model: UniHema, directory: str | os.PathLike[str]) -> Path:
    """Write the model into ``directory`` (created if needed); every file is written atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _unique_state(model)
    metadata = {FORMAT_KEY: FORMAT_VALUE, ALIASES_KEY: json.dumps(aliases, sort_keys=True)}
    if model.config.preset is not None:
        metadata[PRESET_KEY] = str(model.config.preset)
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    # The weights file carries every tensor: a reload must not read pretrained T5 or backbone files again.
    # (The model's config holds the backbone options resolved, so dropping the file keeps the same norms.)
    config = dataclasses.replace(
        model.config,
        text=dataclasses.replace(model.config.text, pretrained_path=None),
        vision=dataclasses.replace(model.config.vision, backbone_weights=None),
    )
    config.save(directory / CONFIG_NAME)
    _save_tokenizer(model.tokenizer, directory / TOKENIZER_DIR)
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is not None:
        preprocessor.save(directory)
    return directory


def load_pretrained(
    cls: type[UniHema], directory: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> UniHema:
    """Build the model from ``config.json`` and the saved tokenizer, then load ``model.safetensors``."""
    from unihema.model.text import load_tokenizer

    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name} not found (expected a directory written by save_pretrained)"
            )
    config = UniHemaConfig.load(directory / CONFIG_NAME)
    tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
    model = cls.from_config(config, tokenizer=tokenizer)
    load_weights(model, directory / WEIGHTS_NAME)
    model.preprocessor = PreprocessorConfig.load(directory)
    return model.to(map_location)


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load ``path`` into ``model`` strictly; raises :class:`CheckpointError` on the first mismatch."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    expected = model.state_dict()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            stored = set(handle.keys())
            aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
            state: dict[str, Tensor] = {}
            hint = _origin_hint(model, metadata)
            for name, tensor in expected.items():
                source = name if name in stored else aliases.get(name)
                if source is None or source not in stored:
                    raise CheckpointError(f"{path}: tensor {name!r} is missing from the checkpoint{hint}")
                shape = tuple(handle.get_slice(source).get_shape())
                if shape != tuple(tensor.shape):
                    raise CheckpointError(
                        f"{path}: tensor {name!r} has shape {shape} in the checkpoint but the model expects "
                        f"{tuple(tensor.shape)}{hint}"
                    )
                state[name] = handle.get_tensor(source)
    except SafetensorError as error:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt): {error}"
        ) from error
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: corrupt alias metadata: {error}") from error
    unexpected = sorted(stored - set(expected) - set(aliases.values()))
    if unexpected:
        raise CheckpointError(
            f"{path}: tensor {unexpected[0]!r} in the checkpoint is not part of the model{hint}"
        )
    model.load_state_dict(state, strict=True)


def _origin_hint(model: torch.nn.Module, metadata: dict[str, str]) -> str:
    """Why a weights file may not fit: it names the preset it was saved from when that differs."""
    saved = metadata.get(PRESET_KEY)
    preset = getattr(getattr(model, "config", None), "preset", None)
    if saved is not None and saved != str(preset):
        return (
            f" (the file was saved from a model of preset {saved!r}; the configuration describes "
            f"{'preset ' + repr(preset) if preset is not None else 'a custom model'}: weights and config.json "
            "come from different models)"
        )
    return " (were the weights saved from a model of another configuration?)"
