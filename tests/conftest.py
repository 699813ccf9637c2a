"""Make the collection (through the link `make setup` creates) and the host-side package importable."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT / ".ansible" / "collections", ROOT / "files" / "connector"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
