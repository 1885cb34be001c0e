"""Write the API's OpenAPI document (the web console's client types are generated from it).

Usage: python scripts/dump_openapi.py [OUT]  (default: web/openapi.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tesai.app import create_app
from tesai.settings import Settings


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "web/openapi.json")
    app = create_app(Settings())
    out.write_text(json.dumps(app.openapi(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
