"""``unihema data``: the dataset catalog, downloads and dataset checks.

- ``unihema data list [--kind paper|staged] [--task TASK] [--json]``
- ``unihema data info NAME [--json]``
- ``unihema data download NAME --to DIR [--filename NAME] [--quiet]``
- ``unihema data check PATH [--format FMT] [--dataset NAME] [--option KEY=VALUE ...] [--json]``
- ``unihema data synthetic --out DIR [--n-images N] [--image-size PX] [--seed S] [--workers W]``

``check`` reads the folder with the options of its ``unihema.yaml`` descriptor (if any) and of each
``--option KEY=VALUE`` (the value is YAML: ``mapping=cell``, ``colour_map={background: [255, 255, 255],
nucleus: [0, 255, 255]}``), and says which rule made it pick the reader.

Only the catalog is imported at parse time; readers load when ``check`` runs, and nothing here imports
torch, so these commands start fast.
"""

from __future__ import annotations

import argparse
import json
import sys

from unihema.data.catalog import READER_FORMATS, display, get_dataset, info_text, list_datasets
from unihema.data.schema import Task

_LIST_COLUMNS = ("name", "kind", "tasks", "disease", "format", "license", "data")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="dataset catalog, downloads and dataset checks")
    commands = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    listing = commands.add_parser(
        "list", help="list the catalog (the paper's 46 datasets and the staged ones)"
    )
    listing.add_argument("--kind", choices=("paper", "staged"), help="only entries of this kind")
    listing.add_argument("--task", choices=[task.value for task in Task], help="only entries with this task")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=_list)

    info = commands.add_parser("info", help="everything the catalog knows about one dataset")
    info.add_argument("name", help="catalog name, display name or alias (e.g. bccd, txl_pbc_det, 'SSL Seg')")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)

    download = commands.add_parser("download", help="download a dataset that has a direct link")
    download.add_argument("name", help="catalog name")
    download.add_argument(
        "--to", required=True, metavar="DIR", help="destination folder (created if missing)"
    )
    download.add_argument("--filename", help="file name to save as (default: from the server or the URL)")
    download.add_argument("--quiet", action="store_true", help="no progress bar")
    download.set_defaults(func=_download)

    check = commands.add_parser(
        "check",
        help="load a dataset folder with its reader and summarise it (counts, skipped and fixed items)",
    )
    check.add_argument("path", help="dataset folder")
    check.add_argument(
        "--format",
        choices=READER_FORMATS,
        help="reader to use (default: the one unihema.yaml names, the catalog entry's, or detected)",
    )
    check.add_argument(
        "--dataset", help="catalog entry whose reader options apply (default: the folder's name)"
    )
    check.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option, the value as YAML (repeatable; overrides unihema.yaml and the catalog), "
        "e.g. --option mapping=cell",
    )
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(func=_check)

    synthetic = commands.add_parser(
        "synthetic",
        help="write the built-in synthetic smear corpus (PNG images, COCO boxes, masks, manifest)",
    )
    synthetic.add_argument("--out", required=True, help="output folder")
    synthetic.add_argument("--n-images", type=int, default=1000, help="fields of view (default: 1000)")
    synthetic.add_argument("--image-size", type=int, default=256, help="field side in pixels (default: 256)")
    synthetic.add_argument("--seed", type=int, default=0, help="master seed (default: 0)")
    synthetic.add_argument("--workers", type=int, default=1, help="generator processes (default: 1)")
    synthetic.set_defaults(func=_synthetic)


def _list(args: argparse.Namespace) -> int:
    entries = list_datasets(args.kind)
    if args.task:
        entries = [entry for entry in entries if Task(args.task) in entry.tasks]
    if args.json:
        print(json.dumps([entry.to_dict() for entry in entries], indent=2, ensure_ascii=False))
        return 0
    rows = [
        (
            entry.name,
            entry.kind,
            display([task.value for task in entry.tasks]),
            display(entry.disease),
            display(entry.native_format if len(entry.native_format) <= 12 else "other"),
            display(entry.license),
            "download" if entry.download_url else ("page" if entry.homepage else "none"),
        )
        for entry in entries
    ]
    widths = [
        max(len(column), *(len(row[i]) for row in rows)) if rows else len(column)
        for i, column in enumerate(_LIST_COLUMNS)
    ]
    print("  ".join(column.ljust(width) for column, width in zip(_LIST_COLUMNS, widths)).rstrip())
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"{len(rows)} dataset(s)")
    return 0


def _info(args: argparse.Namespace) -> int:
    entry = get_dataset(args.name)
    print(json.dumps(entry.to_dict(), indent=2, ensure_ascii=False) if args.json else info_text(entry))
    return 0


def _download(args: argparse.Namespace) -> int:
    from unihema.data.download import DownloadError, download

    entry = get_dataset(args.name)
    if entry.download_url is None:
        where = entry.homepage or entry.paper_url
        hint = (
            f"; get it from its homepage: {where}" if where else "; the catalog knows no page for it either"
        )
        print(
            f"unihema: {entry.name} ({entry.display_name}) has no direct download link{hint}", file=sys.stderr
        )
        return 1
    try:
        path = download(
            entry.download_url, args.to, filename=args.filename, sha256=entry.sha256, size=entry.size,
            progress=not args.quiet,
        )  # fmt: skip
    except DownloadError as error:
        print(f"unihema: error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _check(args: argparse.Namespace) -> int:
    from unihema.data.check import check_dataset
    from unihema.data.formats.descriptor import parse_option_pairs

    report = check_dataset(
        args.path, args.format, dataset=args.dataset, options=parse_option_pairs(args.option)
    )
    print(report.to_json() if args.json else report.to_text())
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unihema.data.synthetic import SyntheticConfig, generate_corpus

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file of that name exists; give a folder (new or existing)")
    config = SyntheticConfig(n_images=args.n_images, image_size=args.image_size, seed=args.seed)
    try:
        generate_corpus(config, out, workers=args.workers)
    except OSError as error:
        # A parent that is a file, no permission, a full disk: each file written so far is whole (atomic).
        where = f": {error.filename}" if error.filename else ""
        raise ValueError(f"--out {out}: cannot write the corpus ({error.strerror or error}{where})") from None
    print(f"wrote {config.n_images} synthetic fields of view to {args.out}")
    return 0
