"""Check a pruning report as a person sees it: open its index.html in headless Chromium,
fail on any image that does not load, on any element that makes the page scroll
sideways, on a page taller than a limit, and on text inside a figure that overlaps other
text or runs off the figure's edge; save a screenshot of the top of the page.

    python scripts/check_report_page.py REPORT_DIR [--screenshot PNG] [--width 1300] [--height 1600] \
        [--max-height 6000]

Height: the page's scroll height as it opens (folded <details> folded), at --width; more
than --max-height pixels (default 6000, PAGE_HEIGHT_LIMIT in dynunc/report/figures.py) is a
problem. The height with every <details> open is printed too. The other checks run with
every <details> open, so that nothing folded escapes them.

Text in figures: report.py's figures record, in a PNG text chunk, where matplotlib drew
each piece of text (dynunc/report/figures.py's png_bytes: the boxes from the renderer at
save time, turned with rotated text); two boxes that overlap by more than a pixel, or a
box that leaves the figure, is a problem, and so is a figure on the page that records no
boxes (its text cannot be checked).

An element counts as too wide when it reaches beyond the window and no ancestor holds it
in (overflow-x visible all the way up), or when it reaches beyond an ancestor that cuts
it off (overflow-x hidden or clip). Inside a scrolling container (overflow-x auto or
scroll, the report's `.wide` tables) it may be as wide as it likes: that container
scrolls, not the page, and the container itself is checked like any other element. How
many such containers scroll is printed, not counted as a problem.

Exit code 0: every image loaded, nothing makes the page scroll sideways or is cut off,
the page is within its height limit and no figure's text overlaps; 1: the problems are
listed; 2: no Chromium, or no report. The report is not modified: the check runs on a
copy with a small script added (it writes what it measured into the page, which
Chromium's --dump-dom prints). Needs Debian's `chromium` (or --chromium PATH); no
network, no Python package beyond the project's.
"""
import argparse
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dynunc.report.figures import PAGE_HEIGHT_LIMIT, png_text_problems  # noqa: E402
from dynunc.io import atomic_open  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
RESULT_ID = "page-check-result"
# Runs after the page and its images have loaded; writes what it found into the page.
PROBE = """<script>(function () {
  function describe(el) {
    var name = el.tagName.toLowerCase() + (el.id ? "#" + el.id : "");
    var src = el.getAttribute("src");
    return src ? name + "[src=" + src + "]" : name;
  }
  // The page as it opens (folded sections folded), then every <details> opened: the
  // checks below see everything, and the height is measured both ways.
  var foldedHeight = null;
  function openAll() {
    foldedHeight = document.documentElement.scrollHeight;
    Array.prototype.forEach.call(document.querySelectorAll("details"), function (d) { d.open = true; });
    setTimeout(run, 200);
  }
  function run() {
    var width = document.documentElement.clientWidth;
    var images = Array.prototype.slice.call(document.images);
    var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                       .map(function (i) { return i.getAttribute("src"); });
    // The nearest ancestor that does not let its content spill out sideways (overflow-x
    // other than visible), or null: inside a scrolling one (auto, scroll) an element may be
    // as wide as it likes; a clipping one (hidden, clip) cuts it off.
    function container(el) {
      for (var up = el.parentElement; up && up !== document.body; up = up.parentElement) {
        if (getComputedStyle(up).overflowX !== "visible") { return up; }
      }
      return null;
    }
    var wide = [], scrolling = [];
    Array.prototype.forEach.call(document.body.querySelectorAll("*"), function (el) {
      var r = el.getBoundingClientRect();
      if (r.width <= 0) { return; }
      var own = getComputedStyle(el).overflowX;
      if ((own === "auto" || own === "scroll") && el.scrollWidth > el.clientWidth + 1) {
        scrolling.push(describe(el));
      }
      var box = container(el);
      if (box === null) {
        if (r.right > width + 0.5 || r.left < -0.5) {
          wide.push({element: describe(el), left: Math.round(r.left), right: Math.round(r.right)});
        }
        return;
      }
      var overflow = getComputedStyle(box).overflowX;
      var b = box.getBoundingClientRect();
      if (overflow !== "auto" && overflow !== "scroll" && (r.right > b.right + 0.5 || r.left < b.left - 0.5)) {
        wide.push({element: describe(el), left: Math.round(r.left), right: Math.round(r.right),
                   cut: describe(box) + " (overflow-x: " + overflow + ")", boxLeft: Math.round(b.left),
                   boxRight: Math.round(b.right)});
      }
    });
    var out = document.createElement("pre");
    out.id = "%s";
    out.textContent = JSON.stringify({width: width, scrollWidth: document.documentElement.scrollWidth,
                                      images: images.length, broken: broken, wide: wide,
                                      scrolling: scrolling, height: foldedHeight,
                                      openHeight: document.documentElement.scrollHeight,
                                      details: document.querySelectorAll("details").length,
                                      sources: images.map(function (i) { return i.getAttribute("src"); })});
    document.body.appendChild(out);
  }
  if (document.readyState === "complete") { openAll(); } else { window.addEventListener("load", openAll); }
})();</script>""" % RESULT_ID


class PageCheckError(Exception):
    """No browser, no page, or the browser did not answer."""


def find_browser(explicit: Optional[str] = None) -> Optional[str]:
    if explicit:
        return explicit if shutil.which(explicit) else None
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def _chromium(browser: str, page: str, width: int, height: int, *extra: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions",
             f"--window-size={width},{height}", "--virtual-time-budget=10000"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run its sandbox as root (containers, CI)
    with tempfile.TemporaryDirectory(prefix="check-report-profile-") as profile:
        try:
            return subprocess.run([browser, *flags, f"--user-data-dir={profile}", *extra, "file://" + page],
                                  capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise PageCheckError(f"{browser} did not finish within 120 s on {page}") from None


def measure(report_dir: str, browser: str, width: int, height: int) -> dict:
    """What the probe measured on a copy of the report with the probe added."""
    with tempfile.TemporaryDirectory(prefix="check-report-") as tmp:
        copy = os.path.join(tmp, "report")
        shutil.copytree(report_dir, copy)
        index = os.path.join(copy, "index.html")
        with open(index, encoding="utf-8") as f:
            page = f.read()
        page = page.replace("</body>", PROBE + "</body>", 1) if "</body>" in page else page + PROBE
        with open(index, "w", encoding="utf-8") as f:
            f.write(page)
        done = _chromium(browser, index, width, height, "--dump-dom")
    found = re.search(rf'<pre id="{RESULT_ID}">(.*?)</pre>', done.stdout, re.S)
    if not found:
        raise PageCheckError(f"{browser} printed no result for {report_dir} (exit {done.returncode}): "
                             f"{done.stderr.strip()[-500:]}")
    return json.loads(html.unescape(found.group(1)))


def figure_problems(report_dir: str, sources: Sequence[str]) -> List[str]:
    """Overlapping or cut-off text in the page's figures (the images beside the page), one
    line each, naming the figure."""
    found = []
    for src in dict.fromkeys(sources):
        path = os.path.join(report_dir, src)
        if not src or "://" in src or src.startswith("/") or not os.path.isfile(path):
            continue  # not a file beside the page: the load check names it
        with open(path, "rb") as f:
            data = f.read()
        try:
            lines = png_text_problems(data)
        except (OSError, ValueError) as e:
            found.append(f"{src}: cannot read its recorded text boxes: {e}")
            continue
        if lines is None:
            found.append(f"{src}: records no text boxes (not drawn by report.py's figures): its text cannot be checked")
        found += [f"{src}: {line}" for line in lines or ()]
    return found


def problems(result: dict, report_dir: Optional[str] = None, max_height: Optional[int] = None) -> List[str]:
    """The problems a person would see, one line each."""
    found = [f"image does not load: {src}" for src in result["broken"]]
    found += [f"{w['element']} reaches {w['left']}..{w['right']} px, cut off by {w['cut']} at "
              f"{w['boxLeft']}..{w['boxRight']} px" if "cut" in w else
              f"{w['element']} reaches {w['left']}..{w['right']} px, beyond the {result['width']} px page"
              for w in result["wide"]]
    if result["scrollWidth"] > result["width"] and not result["wide"]:
        found.append(f"the page scrolls sideways: {result['scrollWidth']} px wide in a {result['width']} px window")
    if max_height is not None and result["height"] > max_height:
        found.append(f"the page is {result['height']} px tall as it opens, more than the {max_height} px limit "
                     f"(--max-height)")
    if report_dir is not None:
        found += figure_problems(report_dir, result["sources"])
    return found


def screenshot(report_dir: str, browser: str, width: int, height: int, output: str, palette: bool) -> None:
    """The top of the page (width x height), written atomically as PNG (256 colours with
    `palette`, which keeps a text page small)."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="check-report-shot-") as tmp:
        shot = os.path.join(tmp, "shot.png")
        done = _chromium(browser, os.path.abspath(os.path.join(report_dir, "index.html")), width, height,
                         f"--screenshot={shot}")
        if not os.path.exists(shot):
            raise PageCheckError(f"{browser} wrote no screenshot (exit {done.returncode}): "
                                 f"{done.stderr.strip()[-500:]}")
        with Image.open(shot) as image:
            image = image.convert("RGB")
            if palette:
                image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
    with atomic_open(output, "wb") as f:
        f.write(buffer.getvalue())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="the report folder (report.py --output), or its index.html")
    parser.add_argument("--screenshot", metavar="PNG", help="where to save the screenshot (default: none)")
    parser.add_argument("--width", type=int, default=1300, help="window width in pixels (default 1300)")
    parser.add_argument("--height", type=int, default=1600, help="window and screenshot height (default 1600)")
    parser.add_argument("--max-height", type=int, default=PAGE_HEIGHT_LIMIT,
                        help=f"the tallest the page may be as it opens, in pixels (default {PAGE_HEIGHT_LIMIT})")
    parser.add_argument("--palette", action="store_true", help="save the screenshot with 256 colours (smaller)")
    parser.add_argument("--chromium", help=f"the browser to run (default: the first of {', '.join(BROWSERS)})")
    args = parser.parse_args(argv)
    report_dir = os.path.dirname(args.report) if args.report.endswith(".html") else args.report
    report_dir = os.path.abspath(report_dir or ".")
    if not os.path.isfile(os.path.join(report_dir, "index.html")):
        parser.error(f"{args.report}: no index.html there (give report.py's --output folder)")
    browser = find_browser(args.chromium)
    if browser is None:
        parser.error(f"no browser found ({args.chromium or ', '.join(BROWSERS)}); on Debian: apt-get install chromium")
    try:
        result = measure(report_dir, browser, args.width, args.height)
        if args.screenshot:
            screenshot(report_dir, browser, args.width, args.height, args.screenshot, args.palette)
    except PageCheckError as e:
        parser.error(str(e))
    found = problems(result, report_dir, args.max_height)
    for line in found:
        print(f"{os.path.join(args.report, 'index.html') if not args.report.endswith('.html') else args.report}: "
              f"{line}")
    print(f"{result['images']} images, {len(result['broken'])} not loaded; {len(result['wide'])} elements wider "
          f"than the {result['width']} px page or cut off; {len(result['scrolling'])} boxes scroll sideways "
          f"inside it; page height {result['height']} px as it opens ({result['details']} sections folded), "
          f"{result['openHeight']} px with every one open; {len(found)} problems"
          + (f"; screenshot {args.screenshot}" if args.screenshot else ""))
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
