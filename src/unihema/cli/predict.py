"""``unihema predict``: analyse smear images with a saved model and write results a lab can open.

Per image a JSON, an overlay PNG, a mask PNG and a QuPath GeoJSON; per run ``cells.csv``, ``summary.csv``,
one HTML report per slide and ``run.json`` (layout: :mod:`unihema.inference.batch`). Launch under
``torchrun`` to shard the images across processes.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from unihema.cli._options import resolve_device
from unihema.data.schema import Task


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="analyse images or folders of images with a saved model (JSON, PNG, GeoJSON, CSV)"
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--model", required=True, type=Path, help="folder written by save_pretrained")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--tasks", nargs="+", default=["detection", "fov_morphology", "segmentation"],
        choices=[t.value for t in Task], help="tasks to run (default: detection fov_morphology segmentation)",
    )  # fmt: skip
    parser.add_argument("--question", help="a question about the cell (vqa)")
    parser.add_argument("--sentence", help="a sentence with <extra_id_0> to complete (mlm)")
    parser.add_argument("--disease", help="disease context of the prompt, e.g. malaria, leukemia")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="minimum cell score (0.3)")
    parser.add_argument("--max-detections", type=int, default=3000, help="most cells per image (3000)")
    parser.add_argument("--tiling", choices=["auto", "always", "never"], default="auto",
                        help="tile fields larger than the tile size (auto)")  # fmt: skip
    parser.add_argument(
        "--tile-size", type=int, help="tile side in pixels (default: the model's det_max_size)"
    )
    parser.add_argument(
        "--tile-overlap", type=int, help="overlap of tiles in pixels (default: a quarter tile)"
    )
    parser.add_argument("--white-count", type=float,
                        help="the patient's white-cell count per microlitre (thick-film parasitemia; 8000 if unset)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="re-analyse images whose outputs exist")
    parser.add_argument("--no-slide-reports", action="store_true", help="skip the HTML slide reports")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import warnings

    from unihema.inference import batch
    from unihema.inference.predictor import Predictor
    from unihema.model.unihema import UniHema
    from unihema.train import distributed

    jobs = batch.collect_images(args.inputs)
    resolve_device(args.device)  # a device this machine lacks fails here, in one line naming --device
    context = distributed.setup(args.device)
    try:
        model = UniHema.from_pretrained(args.model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predictor = Predictor(model, device=context.device)
        for warning in caught:
            print(f"unihema predict: warning: {warning.message}", file=sys.stderr)
        options = {
            "tasks": args.tasks, "question": args.question, "sentence": args.sentence, "disease": args.disease,
            "score_threshold": args.score_threshold, "max_detections": args.max_detections,
            "tiling": {"mode": args.tiling, "tile_size": args.tile_size, "overlap": args.tile_overlap},
        }  # fmt: skip
        # Validate the options once, before the first image, so a bad option is not reported per image.
        list(predictor.predict_iter([], **options))

        def predict_one(path: Path):
            return next(predictor.predict_iter(path, **options))

        with _writing_into(args.out):
            record = batch.run_archive(
                predict_one, jobs, args.out, rank=context.rank, world_size=context.world_size,
                overwrite=args.overwrite, progress=not args.no_progress,
            )  # fmt: skip
        if context.enabled:
            distributed.barrier()
            record = _merged_record(record, context)
        if context.is_main:
            summary_options = {} if args.white_count is None else {"white_count_per_ul": args.white_count}
            with _writing_into(args.out):
                written = batch.write_run_tables(
                    jobs, args.out, record, summary_options, slide_reports=not args.no_slide_reports
                )
            print(
                f"{len(record.processed)} analysed, {len(record.skipped)} already complete, "
                f"{len(record.failed)} failed; tables in {written['cells'].parent}"
            )
    finally:
        distributed.teardown(context)
    analysed = len(record.processed) + len(record.skipped)
    return 1 if jobs and analysed == 0 else 0


@contextlib.contextmanager
def _writing_into(out: Path) -> Iterator[None]:
    """An ``OSError`` while results are written (a full disk, no permission) becomes one line naming --out;
    every file is written atomically, so what was finished before stays whole."""
    try:
        yield
    except OSError as error:
        raise ValueError(
            f"--out {out}: cannot write the results ({error.strerror or error}); the images finished before "
            "are complete, and a re-run continues with the others"
        ) from None


def _merged_record(record, context):
    """Every rank's record gathered on all ranks (they are small: image keys and error messages)."""
    import torch.distributed as dist

    from unihema.inference.batch import RunRecord

    gathered: list = [None] * context.world_size
    dist.all_gather_object(gathered, record)
    merged = RunRecord()
    for part in gathered:
        merged.processed += part.processed
        merged.skipped += part.skipped
        merged.failed.update(part.failed)
    return merged
