"""First-load size of the web console: gzipped JavaScript a browser fetches to show "/".

Reads the Vite manifest of the build (``src/tesai/console/dist/.vite/manifest.json``) and
follows static imports from the entry and from the landing page's lazy chunk; every other
page, chart and wallet library is a lazy chunk fetched later. Builds first when no build is
there (``make web``). Budget: 500 kB gzipped.

Usage: python bench/web_bundle.py [--route src/pages/public/Landing.tsx]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "src" / "tesai" / "console" / "dist"
BUDGET_KB = 500.0


def static_closure(manifest: dict[str, dict[str, object]], keys: list[str]) -> list[str]:
    """Manifest keys reachable from ``keys`` through static imports (in load order)."""
    seen: list[str] = []
    stack = list(keys)
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.append(key)
        stack.extend(str(k) for k in manifest[key].get("imports", []))  # type: ignore[union-attr]
    return seen


def gz_kb(path: Path) -> float:
    return len(gzip.compress(path.read_bytes(), compresslevel=9)) / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--route", default="src/pages/public/Landing.tsx")
    args = parser.parse_args()
    manifest_path = DIST / ".vite" / "manifest.json"
    if not manifest_path.exists():
        subprocess.run(["make", "-C", str(ROOT), "web"], check=True)
    manifest: dict[str, dict[str, object]] = json.loads(manifest_path.read_text())
    entry = next(k for k, v in manifest.items() if v.get("isEntry"))
    keys = static_closure(manifest, [entry, args.route])
    files = sorted({str(manifest[k]["file"]) for k in keys})
    total_js = 0.0
    print(f"{'file':<48} {'raw kB':>8} {'gzip kB':>8}")
    for f in files:
        p = DIST / f
        raw, gz = p.stat().st_size / 1000, gz_kb(p)
        total_js += gz
        print(f"{f:<48} {raw:8.1f} {gz:8.1f}")
    css = sorted({str(c) for k in keys for c in manifest[k].get("css", [])})  # type: ignore[union-attr]
    css_kb = sum(gz_kb(DIST / c) for c in css)
    all_js = sum(gz_kb(p) for p in (DIST / "assets").glob("*.js"))
    print(f"first load ({args.route}): {total_js:.1f} kB gzipped JS (+ {css_kb:.1f} kB CSS)")
    print(f"every chunk together: {all_js:.1f} kB gzipped JS; budget {BUDGET_KB:.0f} kB first load")
    return 0 if total_js <= BUDGET_KB else 1


if __name__ == "__main__":
    sys.exit(main())
