"""``unihema model``: inspect model configurations.

``unihema model info --preset paper`` prints the parameter count of every module group (B, E_I, D_I,
E_T, D_T, CMF, TGVR, SCFE, QGMF, heads) and the total; for the ``paper`` preset it compares the vision
and text totals with the authors' model. The model is built on PyTorch's ``meta`` device (shapes only,
no memory, no initialisation), so even the 300M-parameter preset is counted in about a second.

``unihema model convert-upstream CKPT --out DIR`` converts the authors' released checkpoint into a
``save_pretrained`` folder and prints how many tensors were converted, dropped and initialised
(``docs/upstream-checkpoint.md``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from unihema.model.presets import PRESETS

# Measured parameter counts of the authors' model (flan-t5-base text model, ResNet-50 vision side).
UPSTREAM_VISION_PARAMS = 54_453_088
UPSTREAM_TEXT_PARAMS = 247_577_856
TEXT_GROUPS = ("E_T", "D_T")
MILLION = 1e6


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="inspect model configurations")
    commands = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    info = commands.add_parser("info", help="parameter count per module group")
    source = info.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=PRESETS, default="tiny", help="model preset (default: tiny)")
    source.add_argument("--config", help="a configuration file (.json/.yaml) instead of a preset")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=run_info)

    convert = commands.add_parser(
        "convert-upstream", help="convert the authors' released checkpoint into a UniHema folder"
    )
    convert.add_argument("checkpoint", metavar="CKPT", help="the authors' .pth (e.g. checkpoint0023.pth)")
    convert.add_argument("--out", required=True, help="output folder (written with save_pretrained)")
    convert.add_argument(
        "--tokenizer",
        help="local folder with flan-t5-base's tokenizer files (needed for meaningful VQA/MLM output)",
    )
    convert.add_argument(
        "--config", help="a configuration file mirroring the authors' model (default: the built-in mirror)"
    )
    convert.add_argument("--json", action="store_true", help="print the full mapping report as JSON")
    convert.set_defaults(func=run_convert_upstream)


def parameter_report(config: Any) -> dict[str, Any]:
    """Parameter counts per module group of the model described by ``config`` (built on ``meta``)."""
    import torch

    from unihema.model.configuration import MODULE_GROUPS
    from unihema.model.unihema import UniHema

    with torch.device("meta"):
        model = UniHema.from_config(config)
    groups = model.module_groups()
    counts = {name: sum(p.numel() for p in groups[name].parameters()) for name in MODULE_GROUPS}
    trainable = {
        name: sum(p.numel() for p in groups[name].parameters() if p.requires_grad) for name in MODULE_GROUPS
    }
    total = sum(p.numel() for p in model.parameters())
    text = sum(counts[name] for name in TEXT_GROUPS)
    report: dict[str, Any] = {
        "preset": config.preset,
        "groups": counts,
        "trainable": trainable,
        "vision": total - text,
        "text": text,
        "total": total,
    }
    if config.preset == "paper":
        report["upstream"] = {
            "vision": UPSTREAM_VISION_PARAMS,
            "text": UPSTREAM_TEXT_PARAMS,
            "total": UPSTREAM_VISION_PARAMS + UPSTREAM_TEXT_PARAMS,
        }
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"UniHema parameters (preset: {report['preset'] or 'custom'})",
        f"{'group':<8}{'params':>16}{'trainable':>16}",
    ]
    for name, count in report["groups"].items():
        lines.append(f"{name:<8}{count:>16,}{report['trainable'][name]:>16,}")
    lines.append(f"{'vision':<8}{report['vision']:>16,}   ({report['vision'] / MILLION:.1f}M)")
    lines.append(f"{'text':<8}{report['text']:>16,}   ({report['text'] / MILLION:.1f}M)")
    lines.append(f"{'total':<8}{report['total']:>16,}   ({report['total'] / MILLION:.1f}M)")
    upstream = report.get("upstream")
    if upstream:
        lines.append("compared with the authors' model (flan-t5-base):")
        for key in ("vision", "text", "total"):
            ours, theirs = report[key], upstream[key]
            lines.append(
                f"  {key:<7}{ours / MILLION:>8.1f}M here vs {theirs / MILLION:.1f}M upstream ({ours - theirs:+,})"
            )
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    from unihema.model.configuration import UniHemaConfig

    config = UniHemaConfig.load(args.config) if args.config else UniHemaConfig.from_preset(args.preset)
    report = parameter_report(config)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def run_convert_upstream(args: argparse.Namespace) -> int:
    from unihema.model.configuration import UniHemaConfig
    from unihema.model.convert_upstream import convert_upstream_checkpoint

    config = UniHemaConfig.load(args.config) if args.config else None
    model, result = convert_upstream_checkpoint(args.checkpoint, config, tokenizer=args.tokenizer)
    model.save_pretrained(args.out)
    warnings = []
    if args.tokenizer is None:
        warnings.append(
            "no --tokenizer given: the T5 embedding rows follow flan-t5-base's token ids, so VQA/MLM "
            "output needs that tokenizer (the saved folder holds the domain tokenizer)"
        )
    if args.json:
        report = {
            "out": str(args.out),
            **result.summary(),
            "sources": result.sources,
            "dropped_tensors": result.dropped,
            "initialised_tensors": result.initialised,
            "warnings": warnings,
        }
        print(json.dumps(report, indent=2))
        return 0
    counts = result.summary()
    print(f"wrote {args.out}")
    print(
        f"converted {counts['converted']} tensors, dropped {counts['dropped']} upstream tensors, "
        f"initialised {counts['initialised']} of ours (fully or some rows)"
    )
    reasons: dict[str, int] = {}
    for reason in result.dropped.values():
        key = reason.split(": ", 1)[1] if reason.startswith("copy of ") else reason
        reasons[key] = reasons.get(key, 0) + 1
    print("dropped:")
    for reason, count in reasons.items():
        print(f"  {count:>4} x {reason}")
    print("initialised:")
    for name, reason in result.initialised.items():
        print(f"  {name}: {reason}")
    for warning in warnings:
        print(f"warning: {warning}")
    return 0
