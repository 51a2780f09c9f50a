"""UniHema: one model for digital hematopathology."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["UniHema", "UniHemaConfig", "Sample", "Task", "__version__"]

if TYPE_CHECKING:
    from unihema.data.schema import Sample, Task
    from unihema.model.configuration import UniHemaConfig
    from unihema.model.unihema import UniHema


def __getattr__(name: str) -> Any:
    # Lazy so that `import unihema` (and the data CLI) does not import torch.
    if name == "UniHema":
        from unihema.model.unihema import UniHema

        return UniHema
    if name == "UniHemaConfig":
        from unihema.model.configuration import UniHemaConfig

        return UniHemaConfig
    if name in ("Sample", "Task"):
        from unihema.data import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'unihema' has no attribute {name!r}")
