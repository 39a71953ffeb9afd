"""Text inside the report's figures never overlaps (dynunc/report/figures.py): each PNG
records where matplotlib drew its text (png_bytes, from the renderer at save time), and
overlapping_text finds boxes that overlap or leave the figure. No browser needed."""
import io
import os

import numpy as np
from PIL import Image

from dynunc.report import figures
from test_report_page import ELEVEN, page  # noqa: F401 (the fixture: a report with all eleven methods)


def problems_of(fig):
    return figures.png_text_problems(figures.png_bytes(fig))


def test_overlapping_and_cut_off_text_is_found():
    fig = figures._figure((400, 200))
    fig.text(0.1, 0.5, "hello world")
    fig.text(0.15, 0.5, "overlapping")  # starts inside the first
    fig.text(0.1, 0.2, "apart")
    found = problems_of(fig)
    assert len(found) == 1 and found[0].startswith("text 'hello world' overlaps text 'overlapping' near ("), found
    fig = figures._figure((400, 200))
    fig.text(0.95, 0.5, "runs off the right edge")
    found = problems_of(fig)
    assert len(found) == 1 and found[0].startswith("text 'runs off the right edge' reaches beyond the figure's edge "
                                                   "(380,") and found[0].endswith(" in 400 x 200 px"), found


def test_turned_labels_are_turned_boxes():
    """Tick labels at 40 degrees 40 px apart do not touch, though their upright hulls do;
    10 px apart they do."""
    for step, expected in ((1.0, 0), (0.25, 4)):
        fig = figures._figure((600, 300))
        ax = fig.add_axes([0.1, 0.4, 0.8, 0.5])
        ax.set_xlim(-0.5, 10.5)
        ticks = np.arange(0, 10, step)[:5] + 3
        ax.set_xticks(ticks, ["a longer label"] * len(ticks), rotation=40, ha="right")
        ax.set_yticks([])
        found = problems_of(fig)
        assert len([line for line in found if "overlaps" in line]) == expected, found


def test_a_png_without_boxes_is_told_apart():
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buffer, format="PNG")
    assert figures.png_text_problems(buffer.getvalue()) is None


def test_image_grid_captions_fit_their_tiles():
    """The moderate and prototype grids: a long quantity beside each score used to run
    into the neighbouring captions; a long class name is cut with an ellipsis."""
    pixels = np.zeros((figures.THUMB, figures.THUMB, 3), dtype=np.uint8)
    tiles = [(pixels, f"class n0{i}44{i}764-a-long-class-folder\n0.{i}23 closeness to the median distance")
             for i in range(16)]
    data = figures.image_grid("moderate: closeness to the median distance", [("highest", tiles),
                                                                                 ("lowest", tiles)], 16)
    assert figures.png_text_problems(data) == []
    assert figures.fit_caption("a" * 40 + "\nb\nc") == "a" * (figures.CAPTION_CHARS - 1) + "\u2026\nb"


def test_no_figure_of_the_report_has_overlapping_text(page):  # noqa: F811
    pngs = sorted(name for name in os.listdir(page) if name.endswith(".png"))
    assert {f"images_{m}.png" for m in ELEVEN} <= set(pngs)
    for name in pngs:
        with open(os.path.join(page, name), "rb") as f:
            assert figures.png_text_problems(f.read()) == [], name
