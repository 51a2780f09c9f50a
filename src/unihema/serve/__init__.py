"""The web server: a page and a JSON API around one loaded model (``unihema serve``; ``docs/serving.md``).

:func:`create_app` builds the FastAPI app from a model folder or a loaded model and a
:class:`ServeSettings`; the command runs it under uvicorn, on 127.0.0.1 by default. Needs the ``serve``
extra (``pip install 'unihema[serve]'``: FastAPI, uvicorn, python-multipart).

Modules: :mod:`.settings` (limits and options), :mod:`.app` (the routes), :mod:`.upload` (reading and
checking uploads), :mod:`.service` (workers, queue, kept results), :mod:`.errors` (JSON errors),
:mod:`.logs` (access logs), :mod:`.schemas` (OpenAPI shapes), :mod:`.examples` (the synthetic examples)
and ``static/`` (the page).
"""

from __future__ import annotations

from typing import Any

from unihema.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # The app needs FastAPI and torch: imported on first use, so the settings (and ``unihema --help``) do not.
    if name == "create_app":
        from unihema.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
