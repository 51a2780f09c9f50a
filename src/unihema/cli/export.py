"""``unihema export onnx``: write the vision path of a saved model as an ONNX file (``docs/onnx.md``).

``unihema export onnx --model DIR --out FILE [--task detection|segmentation|classification] [--opset N]``
exports one task; ``--check`` then runs the file in onnxruntime and compares it with PyTorch.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a saved model to a deployment format")
    formats = parser.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    onnx = formats.add_parser("onnx", help="the vision path of one task as an ONNX file")
    onnx.add_argument("--model", required=True, type=Path, help="folder written by save_pretrained")
    onnx.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    onnx.add_argument(
        "--task", default="detection", help="detection, segmentation or classification (default: detection)"
    )
    onnx.add_argument("--opset", type=int, default=17, help="ONNX opset, 16 to 20 (default: 17)")
    onnx.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"),
        help="static input size (default: the model's trained size from preprocessor_config.json)",
    )  # fmt: skip
    onnx.add_argument(
        "--fov-attributes", action="store_true", help="detection: add the FoV attribute logits output"
    )
    onnx.add_argument(
        "--check", action="store_true", help="then compare onnxruntime with PyTorch on a random input"
    )
    onnx.set_defaults(func=run_onnx)


def run_onnx(args: argparse.Namespace) -> int:
    from unihema.deploy.onnx_export import (
        TOLERANCE,
        compare_with_onnxruntime,
        example_inputs,
        export_onnx,
        export_task,
        load_for_export,
    )

    task = export_task(args.task)  # a bad task fails before the model is loaded
    model = load_for_export(args.model)
    options = {"image_size": tuple(args.size)} if args.size else {}
    written = export_onnx(
        model, args.out, task=task, opset=args.opset, fov_attributes=args.fov_attributes, **options
    )
    height, width = written.image_size
    print(
        f"wrote {written.path} ({written.task}, opset {written.opset}, {height}x{width} px; "
        f"inputs {', '.join(written.inputs)}; outputs {', '.join(written.outputs)})"
    )
    if not args.check:
        return 0
    inputs = example_inputs(model, task, batch=1, image_size=written.image_size, seed=1)
    differences = compare_with_onnxruntime(model, written.path, inputs)
    report = ", ".join(f"{name} {value:.1e}" for name, value in differences.items())
    print(f"onnxruntime vs PyTorch, largest |difference|: {report} (tolerance {TOLERANCE:.0e})")
    return 1 if max(differences.values()) > TOLERANCE else 0
