"""The figures and report.html of a tiny evaluation: y from 0, the clean point at iteration 0 on integer ticks,
lines told apart, titles with the suite and image count, the example grid's legend, factor and scores; the page
self-contained with every figure embedded."""

from __future__ import annotations

from html.parser import HTMLParser

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from eroseg_at import evaluate_model
from eroseg_at.evaluation import plots

CLASS_NAMES = ("sky", "road", "car", "tree")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, len(CLASS_NAMES), 3, padding=1, stride=2)

    def forward(self, images):
        return {"out": self.conv(images)}


@pytest.fixture(scope="module")
def report():
    generator = torch.Generator().manual_seed(0)
    images, labels = (
        torch.rand(4, 3, 16, 16, generator=generator),
        torch.randint(0, 4, (4, 16, 16), generator=generator),
    )
    loader = DataLoader(TensorDataset(images, labels), batch_size=2)
    return evaluate_model(
        Net(),
        loader,
        suite="quick",
        eps=[4 / 255, 8 / 255],
        class_names=CLASS_NAMES,
        device="cpu",
        overrides=["example_images=2"],
    )


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions draw, kept open instead of closed."""
    figures, close = [], plt.close
    monkeypatch.setattr(plots.plt, "close", figures.append)
    yield figures
    for figure in figures:
        close(figure)


def test_miou_vs_eps_starts_at_zero_and_tells_its_lines_apart(report, drawn, tmp_path):
    plots.miou_vs_eps([report], tmp_path / "eps.png")
    (ax,) = drawn[0].axes
    assert ax.get_ylim()[0] == 0
    assert ax.get_title().endswith("suite quick, 4 images")
    attacks = [line for line in ax.get_lines() if line.get_label() != "worst case"]
    assert len(attacks) == 3
    styles = {(line.get_marker(), line.get_linestyle(), line.get_markersize()) for line in attacks}
    assert len(styles) == 3, styles
    # The worst case lies beneath the attacks, so that an attack equal to it stays visible.
    (worst,) = [line for line in ax.get_lines() if line.get_label() == "worst case"]
    assert worst.get_zorder() < min(line.get_zorder() for line in attacks)


def test_miou_vs_iterations_starts_with_the_clean_point_at_zero_on_integer_ticks(report, drawn, tmp_path):
    plots.miou_vs_iterations([report], tmp_path / "iterations.png")
    (ax,) = drawn[0].axes
    (line,) = ax.get_lines()
    xs, ys = line.get_data()
    assert list(xs) == [0, 1, 2] and ys[0] == pytest.approx(100 * report.row("clean").miou)
    drawn[0].canvas.draw()
    ticks = [tick for tick in ax.get_xticks() if ax.get_xlim()[0] <= tick <= ax.get_xlim()[1]]
    assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
    assert ax.get_ylim()[0] == 0


def test_the_example_grid_has_a_class_legend_the_amplification_and_each_images_score(report, drawn, tmp_path):
    plots.example_grid(report, tmp_path / "examples.png")
    figure = drawn[0]
    (legend,) = figure.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert set(labels[:-1]) <= set(CLASS_NAMES) and labels[-1] == "ignored (255)"
    shown = torch.cat([report.example.labels.flatten(), report.example.clean_prediction.flatten()]).unique()
    assert {CLASS_NAMES[c] for c in shown.tolist()} <= set(labels)
    notes = [ax.get_xlabel() for ax in figure.axes]
    largest = float((report.example.adversarial[0] - report.example.clean[0]).abs().amax())
    assert notes[2] == f"x{0.5 / largest:.0f} (max |δ| {255 * largest:.1f}/255)"
    assert notes[4].startswith("mIoU ") and notes[5].startswith("mIoU ") and notes[4].endswith(" %")


class Resources(HTMLParser):
    """Every URL the page would load (src, href, url(...) in a style) and its images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.images: list[str] = []
        self.tags: list[str] = []
        self.style = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "action", "poster"):
                self.urls.append(value)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self.tags and self.tags[-1] == "style":
            self.style += data


def test_report_html_is_self_contained_with_every_figure_embedded(report, tmp_path):
    files = report.save(tmp_path)
    page = files["report.html"].read_text()
    parser = Resources()
    parser.feed(page)
    figures = sorted(name for name in files if name.endswith(".png"))
    assert len(figures) == 3
    assert len(parser.images) == len(figures)
    assert all(url.startswith("data:image/png;base64,") for url in parser.urls), parser.urls
    assert "script" not in parser.tags and "url(" not in parser.style and "@import" not in parser.style
    # The page leads as results.md does, and holds its tables.
    assert "robust mIoU" in page.split("<table>", 1)[0] and page.count("<table>") >= 3
