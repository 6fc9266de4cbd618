"""Screenshots of every page of the feature browser, for docs/browser.md: serves RUN in this
process and drives Debian's chromium (headless) with Playwright.

    python scripts/browser_screenshots.py runs/demo [--out docs/img/browser] [--query "SQL"]

The feature shown is the best-scored explained one of the largest analysed dictionary (or
--feature). Nothing is written into the run.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import httpx

from monosemantic.web.app import create_app
from monosemantic.web.live import live_server
from monosemantic.web.state import Served


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/img/browser"))
    ap.add_argument("--query", default="the", help="full-text and concept search query")
    ap.add_argument("--feature", type=int, default=-1)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with live_server(create_app(Served([args.run]))) as base:
        run = httpx.get(base + "/api/runs").json()[0]["name"]
        o = httpx.get(f"{base}/api/runs/{run}").json()
        sae = o["analysed"][-1] if o["analysed"] else ""
        sizes = {d["name"]: d["n_features"] for d in o["dictionaries"]}
        sae = max(o["analysed"], key=lambda s: sizes.get(s, 0)) if o["analysed"] else sae
        feature = args.feature
        if feature < 0:
            best = httpx.get(f"{base}/api/runs/{run}/saes/{sae}/features?order=score&per_page=1").json()
            feature = best["features"][0]["id"]
        shots = [
            ("overview", f"/run/{run}", None),
            ("feature", f"/run/{run}/{sae}/feature/{feature}", "#top .tok[style]"),
            ("features", f"/run/{run}/{sae}/features", None),
            ("search-text", f"/run/{run}/search?sae={sae}&q={args.query}", None),
            ("search-concept", f"/run/{run}/search?sae={sae}&mode=concept&q={args.query}", None),
            ("map", f"/run/{run}/{sae}/map", "#map[data-ready]"),
            ("catalog", f"/run/{run}/catalog", None),
        ]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            for name, path, wait in shots:
                page.goto(base + path, timeout=600_000)
                if wait:
                    page.wait_for_selector(wait, timeout=600_000)
                    if name == "feature":
                        page.locator(wait).first.hover()
                page.screenshot(path=str(args.out / f"{name}.png"), full_page=name != "feature")
                print(args.out / f"{name}.png")
            browser.close()


if __name__ == "__main__":
    main()
