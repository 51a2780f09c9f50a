"""The authors' Uni-Hema model against UniHema's ``paper`` preset: one full analysis of a field on this CPU,
side by side in one process, with a large matmul measuring the CPU's peak in the same run.

The authors' code is not part of this repository. Pass ``--upstream`` a local copy (a checkout) of the
public ``intelligentMachines-ITU/Uni-Hema`` repository; without one the script says so and exits. To run
their code on a CPU the script, without touching their files:

- replaces their compiled ``MultiScaleDeformableAttention`` op by the pure-PyTorch fallback that ships in
  the same file (``ms_deform_attn_core_pytorch``);
- makes ``.cuda()`` a no-op (their constructors and losses call it unconditionally);
- builds T5 from the flan-t5-base configuration with random weights instead of downloading it, with a
  tokenizer stand-in that pads every prompt to their 64 tokens;
- builds the ResNet-50 without ImageNet weights, and gives modules their inference path never reaches
  (fvcore's initialisers, timm, detectron2, addict, yapf, termcolor, OpenCV) empty stand-ins.

Both models get random weights, batch 1, eval mode, no gradients. The authors' forward runs every head at
once (boxes, FoV attributes, the mask, the image class and the text fusion); ours runs
``UniHema.forward_fields`` for detection, FoV morphology and segmentation in one shared pass (the image
class and the text fusion, small heads on the same features, are not in it).

    python benchmarks/bench_upstream.py --upstream ~/src/Uni-Hema --write-doc docs/benchmarks.md

Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import platform
import runpy
import sys
import types
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from benchmark_doc import (
    add_allocator_option,
    apply_allocator,
    command_line,
    matmul_peak,
    median_seconds,
    write_section,
)

from unihema.data.schema import Task
from unihema.model.unihema import UniHema

SECTION_TITLE = "## Against the authors' code"
# Modules the authors' files import at load time but their inference path never calls.
ABSENT_MODULES = ("fvcore", "timm", "detectron2", "addict", "yapf", "termcolor", "cv2", "ipdb", "panopticapi")
FLAN_T5_BASE = dict(
    vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
    eos_token_id=1,
)  # fmt: skip
PROMPT_TOKENS = 64


class _Anything(types.ModuleType):
    """A module whose every attribute is a do-nothing callable (and a module again)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(f"{self.__name__}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


class _AbsentFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname.split(".")[0] in ABSENT_MODULES:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _Anything(spec.name)
        module.__path__ = []  # a package, so submodule imports resolve here too
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _PaddingTokenizer:
    """Stands in for flan-t5-base's tokenizer: fixed-length ids, as their ``encode_prompts`` pads to."""

    pad_token_id = 0

    def __call__(self, texts: list[str], max_length: int = PROMPT_TOKENS, **kwargs: Any) -> Any:
        from transformers import BatchEncoding

        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, text in enumerate(texts):
            words = min(len(text.split()) + 1, max_length)
            ids[row, :words] = torch.arange(3, 3 + words) % 32000
            mask[row, :words] = 1
        encoding = BatchEncoding({"input_ids": ids, "attention_mask": mask})
        encoding.to = lambda device, **kwargs: encoding  # their code moves it to "cuda"
        return encoding

    def as_target_tokenizer(self) -> Any:
        return nullcontext()


def build_upstream(root: Path) -> torch.nn.Module:
    """The authors' model (their ``build_dino`` with their DINO_4scale configuration) on the CPU."""
    import torchvision
    import transformers

    sys.meta_path.insert(0, _AbsentFinder())
    sys.modules.setdefault("MultiScaleDeformableAttention", types.ModuleType("MultiScaleDeformableAttention"))
    transformers.AdamW = torch.optim.AdamW  # imported by their model file, gone from recent transformers
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    resnet50 = torchvision.models.resnet50
    torchvision.models.resnet50 = lambda *a, pretrained=False, **k: resnet50(weights=None, **k)
    sys.path.insert(0, str(root))
    from models.dino.ops.functions import ms_deform_attn_func as op

    op.MSDeformAttnFunction.apply = staticmethod(
        lambda value, shapes, starts, locations, weights, step: op.ms_deform_attn_core_pytorch(
            value, shapes, locations, weights
        )
    )
    from models.dino import dino

    # Their model file binds these names at import: replace them there (no download, no sentencepiece).
    t5_config = transformers.T5Config(**FLAN_T5_BASE)
    dino.T5ForConditionalGeneration = types.SimpleNamespace(
        from_pretrained=lambda *a, **k: transformers.T5ForConditionalGeneration(t5_config)
    )
    dino.T5Tokenizer = types.SimpleNamespace(from_pretrained=lambda *a, **k: _PaddingTokenizer())
    config: dict[str, Any] = {}
    for name in ("coco_transformer.py", "DINO_4scale.py"):
        config.update(
            {k: v for k, v in runpy.run_path(str(root / "config" / "DINO" / name)).items() if k[0] != "_"}
        )
    config.update(device="cpu", backbone_dir=None, dataset_file="coco", lr_backbone=1e-5)
    model, _, _ = dino.build_dino(argparse.Namespace(**config))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--upstream", type=Path, default=None, help="a checkout of intelligentMachines-ITU/Uni-Hema"
    )
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--repeats", type=int, default=3)
    add_allocator_option(parser)  # process-wide: both models share it
    parser.add_argument("--write-doc", type=Path, default=None)
    args = parser.parse_args(argv)
    allocator = apply_allocator(args)
    if args.upstream is None or not (args.upstream / "models" / "dino" / "dino.py").is_file():
        print(
            f"skipped: no checkout of intelligentMachines-ITU/Uni-Hema at {args.upstream} "
            "(pass --upstream PATH; its models/dino/dino.py must exist)",
            file=sys.stderr,
        )
        return 0
    torch.manual_seed(0)
    images = torch.randn(1, 3, args.height, args.width)
    theirs = build_upstream(args.upstream)
    ours = UniHema.from_preset("paper").eval()
    prompts = ["blood cells"]
    tasks = (Task.DETECTION, Task.FOV_MORPHOLOGY, Task.SEGMENTATION)

    def run_theirs() -> None:
        theirs(images, prompts)

    def run_ours() -> None:
        ours.forward_fields(images, prompts, tasks)

    rows = []
    for precision in ("float32", "bfloat16"):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else nullcontext()
        with torch.no_grad(), autocast:
            upstream = median_seconds(run_theirs, args.repeats)
            unihema = median_seconds(run_ours, args.repeats)
        rows.append((precision, upstream, unihema))
        print(
            f"{precision}: authors {upstream:.2f} s, ours {unihema:.2f} s, {upstream / unihema:.2f}x",
            flush=True,
        )
    peaks = {
        name: matmul_peak(dtype) for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
    }
    lines = [
        "| precision | authors' code (s) | UniHema `paper` (s) | speed-up | 4096² matmul peak (GFLOP/s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for precision, upstream, unihema in rows:
        lines.append(
            f"| {precision} | {upstream:.2f} | {unihema:.2f} | {upstream / unihema:.2f}x | {peaks[precision]:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write_doc:
        command = command_line(__file__, argv)
        section = (
            f"{SECTION_TITLE}\n\nCommand: `{command}` (a checkout of commit bf69dde of the public "
            f"repository). One {args.height}x{args.width} input, batch 1, random "
            f"weights, median of {args.repeats} runs after one warm-up, both models alternating precision in one "
            f"process; {allocator}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{platform.machine()} CPU, no other job running. The authors' forward runs all of its heads at once; ours runs detection, FoV "
            "morphology and segmentation in one shared pass (not its image-class head or text fusion).\n\n"
            + table
            + "\n"
        )
        write_section(args.write_doc, SECTION_TITLE, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
