"""The report as a person sees it: index.html opened in headless Chromium by
scripts/check_report_page.py, which fails on an image that does not load, an element
that makes the page scroll sideways (or is cut off, folded sections opened), a page
taller than its limit, and overlapping text inside a figure; and saves a screenshot."""
import re
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, make_image_tree, run_main, write_full_history
from dynunc.report import figures, page as report

SCRIPT = os.path.join(ROOT, "scripts", "check_report_page.py")
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="needs a headless browser: Debian's `chromium` package")


def check(report_dir, *extra):
    done = subprocess.run([sys.executable, SCRIPT, str(report_dir), *map(str, extra)], capture_output=True,
                          text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


# every method: the seven from training dynamics and the four from the embeddings
ELEVEN = ["dynunc", "forgetting", "el2n", "aum", "variability", "confidence", "random",
          "moderate", "prototype", "kcenter", "d2"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A report with every section: all eleven methods, relabelled images, accuracies, embeddings."""
    tmp = tmp_path_factory.mktemp("page")
    make_image_tree(str(tmp / "data"), num_classes=4, per_class=10, size=(24, 20))
    listing = tmp / "data" / "file_list.txt"
    rng = np.random.default_rng(5)
    hdir = write_full_history(listing, tmp / "run", np.repeat(np.linspace(0.2, 0.8, 4), 10), 6, rng, noise=0.25)
    np.save(os.path.join(hdir, "embed_5.npy"), rng.normal(size=(40, 8)).astype(np.float16))
    np.save(tmp / "flipped.npy", np.arange(0, 40, 6, dtype=np.int64))
    curve = tmp / "curve.csv"
    curve.write_text("labels,method,fraction,seed,images,top1,top5,flipped_kept\n"
                     + "".join(f"clean,{m},{f},{seed},{int(40 * f)},{70 + 20 * f + seed},99,\n"
                               for m, fractions in (("full", [1.0]), ("dynunc", [0.5, 0.3]), ("random", [0.5, 0.3]))
                               for f in fractions for seed in range(2)))
    out = tmp / "report"
    code, _, err = run_main(report.main, ["--input", tmp / "run", "--dataset_file_list", listing, "--output", out,
                                          "--window", 3, "--fraction", 0.5, 0.3, "--flipped", tmp / "flipped.npy",
                                          "--accuracy", curve, "--method", *ELEVEN])
    assert code == 0, err
    assert (out / "projection.png").exists()
    return out


def test_page_loads_every_image_and_fits(page, tmp_path):
    shot = tmp_path / "shot.png"
    code, out = check(page, "--screenshot", shot, "--width", 1000, "--height", 900)
    assert code == 0, out
    # and nothing has to be scrolled sideways: the 11 x 11 Spearman table's heads are turned to fit
    assert "0 not loaded; 0 elements wider than the 1000 px page or cut off; 0 boxes scroll sideways" in out
    # the decision first and the rest folded: within the stated height, and no figure's text overlaps
    height = int(re.search(r"page height (\d+) px as it opens", out).group(1))
    assert 0 < height <= figures.PAGE_HEIGHT_LIMIT and "; 0 problems" in out
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1000, 900)
        # the top of the page is drawn: not one flat colour
        assert len(image.convert("L").getcolors(maxcolors=1 << 16)) > 8
    assert not any(name.startswith(".") or "check" in name for name in os.listdir(page))  # the report is untouched


def test_page_problems_are_found(page, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(page, broken)
    os.remove(broken / "class_kept.png")
    index = broken / "index.html"
    index.write_text(index.read_text().replace("</body>", '<div id="too-wide" style="width:3000px">x</div>'
                                               '<div style="overflow-x:auto"><div id="scrolls" style="width:3000px">'
                                               'y</div></div><div id="clips" style="overflow-x:hidden;width:200px">'
                                               '<div id="cut" style="width:600px">z</div></div><details><summary>'
                                               'folded</summary><div id="folded-wide" style="width:3000px">w</div>'
                                               '</details></body>'))
    fig = figures._figure((400, 200))  # a figure whose captions run into each other
    fig.text(0.1, 0.5, "a caption")
    fig.text(0.15, 0.5, "another caption")
    (broken / "overlap_0.5.png").write_bytes(figures.png_bytes(fig))
    Image.new("RGB", (40, 20)).save(broken / "overlap_0.3.png")  # drawn elsewhere: no text boxes recorded
    code, out = check(broken, "--max-height", 300)
    assert code == 1, out
    assert "image does not load: class_kept.png" in out
    assert "div#too-wide reaches" in out and "beyond the 1300 px page" in out
    assert "div#folded-wide reaches" in out  # inside a folded <details>: opened and checked
    assert "div#cut reaches" in out and "cut off by div#clips (overflow-x: hidden)" in out
    assert "div#scrolls" not in out  # inside a scrolling container: that scrolls, not the page
    assert "3 elements wider than the 1300 px page or cut off; 1 boxes scroll sideways inside it" in out
    assert "overlap_0.5.png: text 'a caption' overlaps text 'another caption'" in out
    assert "overlap_0.3.png: records no text boxes" in out
    assert re.search(r"the page is \d+ px tall as it opens, more than the 300 px limit \(--max-height\)", out)


def test_no_report_is_refused(tmp_path):
    code, out = check(tmp_path)
    assert code == 2 and "no index.html there" in out
