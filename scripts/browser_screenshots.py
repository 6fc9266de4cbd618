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
from urllib.parse import urlencode

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
    ap.add_argument("--steer-feature", type=int, default=-1, help="feature steered (default: --feature's)")
    ap.add_argument("--steer-scale", type=float, default=3.0)
    ap.add_argument("--prompt", default="I woke up this morning and", help="the steering prompt")
    ap.add_argument("--text", default="The Eiffel tower is in Paris; SELECT * FROM users WHERE id = 1",
                    help="the text analysed")  # fmt: skip
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
        steer = args.steer_feature if args.steer_feature >= 0 else feature
        steering = {"sae": sae, "feature": steer, "scale": args.steer_scale, "prompt": args.prompt,
                    "max_new_tokens": 24, "go": 1}  # fmt: skip
        shots = [
            ("overview", f"/run/{run}", None),
            ("feature", f"/run/{run}/{sae}/feature/{feature}", "#top .tok[style]"),
            ("features", f"/run/{run}/{sae}/features", None),
            ("search-text", f"/run/{run}/search?sae={sae}&q={args.query}", None),
            ("search-concept", f"/run/{run}/search?sae={sae}&mode=concept&q={args.query}", None),
            ("map", f"/run/{run}/{sae}/map", "#map[data-ready]"),
            ("catalog", f"/run/{run}/catalog", None),
            ("steer", f"/run/{run}/steer?{urlencode(steering)}", "#score-steered"),
            ("analyse", f"/run/{run}/search?{urlencode({'sae': sae, 'text': args.text})}", ".analysed .atok"),
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
                    if name == "analyse":  # a token's features, as a click shows them
                        page.locator(wait).nth(3).click()
                        page.locator("#analysis").scroll_into_view_if_needed()
                page.screenshot(
                    path=str(args.out / f"{name}.png"), full_page=name not in ("feature", "analyse")
                )
                print(args.out / f"{name}.png")
            browser.close()


if __name__ == "__main__":
    main()
