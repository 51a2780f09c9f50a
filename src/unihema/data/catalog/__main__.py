"""``python -m unihema.data.catalog [PATH]``: write the catalog's markdown (default ``docs/datasets.md``)."""

import sys

from unihema.data.catalog.render import write_catalog_markdown

print(write_catalog_markdown(sys.argv[1] if len(sys.argv) > 1 else "docs/datasets.md"))
