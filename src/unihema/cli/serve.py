"""``unihema serve``: the page and the JSON API around a saved model, under uvicorn (``docs/serving.md``)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from unihema.serve.settings import ACCEPTED_FORMATS, LOG_FORMATS, ServeSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = ServeSettings()
    parser = subparsers.add_parser("serve", help="serve a web page and a JSON API for a saved model")
    parser.add_argument("--model", required=True, type=Path, help="folder written by save_pretrained")
    parser.add_argument("--host", default=defaults.host, help=f"address to listen on ({defaults.host})")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"TCP port ({defaults.port})")
    parser.add_argument(
        "--max-upload-bytes",
        type=int,
        default=defaults.max_upload_bytes,
        help=f"largest image file accepted ({defaults.max_upload_bytes:,} bytes)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=defaults.max_pixels,
        help=f"largest image accepted, width x height ({defaults.max_pixels:,})",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        default=list(defaults.accepted_formats),
        metavar="FORMAT",
        help=f"accepted image formats ({' '.join(ACCEPTED_FORMATS)})",
    )
    parser.add_argument(
        "--workers", type=int, default=defaults.workers, help=f"inference worker threads ({defaults.workers})"
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=defaults.queue_size,
        help=f"requests that may wait beyond the workers before 503 ({defaults.queue_size})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=defaults.request_timeout_s,
        help=f"seconds a request may wait and run ({defaults.request_timeout_s:g})",
    )
    parser.add_argument(
        "--max-results",
        type=int,
        default=defaults.max_results,
        help=f"results kept in memory for their downloads ({defaults.max_results})",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=defaults.log_format,
        help=f"access log lines ({defaults.log_format})",
    )
    parser.add_argument(
        "--save-requests",
        type=Path,
        metavar="DIR",
        help="write every upload, its options and its result under DIR (off by default)",
    )
    parser.add_argument("--device", default=defaults.device, choices=["auto", "cpu", "cuda"])
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """The :class:`ServeSettings` of the command line (validation errors name the setting)."""
    return ServeSettings(
        host=args.host,
        port=args.port,
        max_upload_bytes=args.max_upload_bytes,
        max_pixels=args.max_pixels,
        accepted_formats=tuple(args.formats),
        workers=args.workers,
        queue_size=args.queue_size,
        request_timeout_s=args.timeout,
        max_results=args.max_results,
        log_format=args.log_format,
        save_requests=args.save_requests is not None,
        requests_dir=args.save_requests,
        device=args.device,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not args.model.is_dir():
        raise FileNotFoundError(f"{args.model}: no such model folder")
    try:
        import uvicorn

        from unihema.serve.app import create_app
        from unihema.serve.logs import configure_logging
    except ImportError as error:
        print(
            f"unihema serve: needs the serve extra: pip install 'unihema[serve]' ({error})", file=sys.stderr
        )
        return 2
    configure_logging()
    if not _is_loopback(settings.host):
        print(
            f"unihema serve: warning: listening on {settings.host}, reachable from other machines; the "
            "server has no authentication",
            file=sys.stderr,
        )
    app = create_app(args.model, settings)
    for warning in app.state.service.model_warnings:
        print(f"unihema serve: warning: {warning}", file=sys.stderr)
    print(f"unihema serve: http://{settings.host}:{settings.port}/ (Ctrl-C stops)", file=sys.stderr)
    # The app writes its own access lines; uvicorn's would repeat them without the image size.
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level="info")
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
