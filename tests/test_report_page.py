"""The report page (index.html): offline, escaped, every picture inside the report folder,
the misclassified images worst first; `headstart report` builds it again."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from headstart.cli import main
from headstart.extractor.samples import make_sample_images
from headstart.heads.artifact import predict_with_onnx
from headstart.heads.dataset import load_labelled_features, split_by_image

ODD = "<b>&\"'$5"  # a class name that is markup, an entity, quotes and a dollar


class Page(HTMLParser):
    """What a page holds: its tags, their attributes, its text, its figures' captions."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.captions: list[str] = []
        self._caption: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "figcaption":
            self._caption = []

    def handle_endtag(self, tag):
        if tag == "figcaption" and self._caption is not None:
            self.captions.append(" ".join(self._caption))
            self._caption = None

    def handle_data(self, data):
        self.text.append(data)
        if self._caption is not None:
            self._caption.append(data.strip())

    def sources(self, tag: str = "img") -> list[str]:
        return [attrs["src"] for name, attrs in self.tags if name == tag and "src" in attrs]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def read_page(report: Path) -> tuple[str, Page]:
    text = (report / "index.html").read_text(encoding="utf-8")
    return text, Page(text)


def check_offline_and_inside(report: Path, text: str, page: Page) -> None:
    """Every picture a file of the report folder; nothing fetched from elsewhere."""
    for source in page.sources():
        assert "/" not in source and "\\" not in source and ":" not in source, source
        assert (report / source).is_file(), source
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "iframe", "object")]
    assert not [attrs for _, attrs in page.tags if "href" in attrs]
    lowered = text.lower()
    assert "http:" not in lowered and "https:" not in lowered and "@import" not in lowered


@pytest.fixture(scope="module")
def hard_images(tmp_path_factory) -> Path:
    """Three classes random weights cannot tell apart well, one with an odd name."""
    root = tmp_path_factory.mktemp("hard") / "images"
    make_sample_images(root, classes=3, per_class=12, size_range=(60, 120), seed=3)
    first = sorted(p for p in root.iterdir())[0]
    first.rename(root / ODD)
    return root


@pytest.fixture(scope="module")
def trained(hard_images, tmp_path_factory, weights_file):
    from headstart.extractor import embed

    root = tmp_path_factory.mktemp("trained")
    embed(hard_images, root / "features", weights=str(weights_file), image_size=75)
    result = run("train", root / "features", "-o", root / "head", "--val-split", "0.5",
                 "--C", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


def test_the_training_page_shows_the_mistakes_worst_first_and_escapes_names(trained):
    report = trained / "head" / "report"
    text, page = read_page(report)
    check_offline_and_inside(report, text, page)
    assert ODD not in text and "&lt;b&gt;&amp;&quot;&#x27;&#36;5" in text
    assert ODD in "".join(page.text)  # a browser shows the name as it is
    # the misclassified validation images, most confident mistake first, as the head says
    data = load_labelled_features(trained / "features")
    _, val = split_by_image(data, 0.5, seed=0)
    probabilities = predict_with_onnx(trained / "head", data.X[val])
    predicted = probabilities.argmax(axis=1)
    wrong = [i for i in range(len(val)) if predicted[i] != data.y[val][i]]
    assert wrong, "the fixture should give mistakes"
    wrong.sort(key=lambda i: -probabilities[i, predicted[i]])
    expected = [data.paths[val[i]] for i in wrong]
    shown = [attrs["alt"] for tag, attrs in page.tags if tag == "img" and "gallery" in attrs["src"]]
    assert shown == expected
    for caption, i in zip(page.captions, wrong):
        assert f"true {data.labels[val[i]]}" in caption
        assert f"predicted {data.classes[predicted[i]]} ({probabilities[i, predicted[i]]:.2f})" in (
            caption
        )
    for source in page.sources():
        if source.startswith("gallery-"):
            assert max(Image.open(report / source).size) <= 160
    assert "confusion_matrix.png" in page.sources()
    assert "What was trained on what" in text and "logreg" in text


def test_a_page_whose_images_are_gone_says_so_and_shows_the_rest(trained, hard_images, tmp_path):
    head = tmp_path / "head"
    shutil.copytree(trained / "head", head)
    moved = hard_images.with_name("moved-away")
    hard_images.rename(moved)
    try:
        result = run("report", head)
    finally:
        moved.rename(hard_images)
    assert result.exit_code == 0, result.output
    text, page = read_page(head / "report")
    assert f"The images folder {hard_images} is not there" in "".join(page.text)
    assert not [s for s in page.sources() if s.startswith("gallery-")]
    assert not list((head / "report").glob("gallery-*.png"))  # the earlier ones removed
    assert "confusion_matrix.png" in page.sources() and len(page.captions) > 0
    check_offline_and_inside(head / "report", text, page)


def test_paths_from_an_edited_report_stay_inside_the_images_folder(trained, tmp_path):
    head = tmp_path / "head"
    shutil.copytree(trained / "head", head)
    listed = head / "report" / "misclassified.csv"
    rows = listed.read_text().splitlines()
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    edited = [rows[0], f"../../{outside.name},a,b,0.9", f"{outside},a,b,0.8", *rows[1:]]
    listed.write_text("\n".join(edited) + "\n")
    result = run("report", head / "report")
    assert result.exit_code == 0, result.output
    text, page = read_page(head / "report")
    assert text.count("not a path inside the images folder") == 2
    assert len(list((head / "report").glob("gallery-*.png"))) == len(rows) - 1


def test_predict_with_labels_writes_a_page_and_report_rebuilds_it(trained, hard_images, tmp_path):
    out = tmp_path / "predictions.csv"
    result = run("predict", trained / "head", hard_images, "-o", out)
    assert result.exit_code == 0, result.output
    report = tmp_path / "predictions_report"
    text, page = read_page(report)
    check_offline_and_inside(report, text, page)
    assert any(source.startswith("gallery-") for source in page.sources())
    (report / "index.html").unlink()
    rebuilt = run("report", out)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert read_page(report)[0] == text


def test_a_head_written_before_the_page_gets_one(tmp_path):
    head = tmp_path / "head"
    shutil.copytree(Path(__file__).parent / "data" / "previous_main" / "head", head)
    result = run("report", head)
    assert result.exit_code == 0, result.output
    text, page = read_page(head / "report")
    check_offline_and_inside(head / "report", text, page)
    assert "written before the gallery" in text and "logreg" in text
    assert json.loads((head / "report" / "metrics.json").read_text())["accuracy"] == 1.0


@pytest.mark.parametrize("what", ["missing", "file", "foreign"])
def test_report_refuses_what_is_not_a_report(tmp_path, what):
    target = tmp_path / "thing"
    if what == "file":
        target = tmp_path / "notes.txt"
        target.write_text("hello")
    if what == "foreign":
        target.mkdir()
        (target / "metrics.json").write_text(json.dumps({"accuracy": 1}))
        (target / "thesis.docx").write_text("mine")
    result = run("report", target)
    assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
    assert "Traceback" not in result.output
    if what == "foreign":
        assert "thesis.docx" in result.output and not (target / "index.html").exists()


def test_class_names_are_escaped_everywhere_on_the_page(tmp_path):
    """Straight from metrics: per-class table, captions and title."""
    from headstart.extractor.safe_files import OutputFolder
    from headstart.heads.report import classification_metrics, write_report
    from headstart.heads.report_page import misclassified_rows

    classes = [ODD, "plain"]
    y = np.array([0, 1, 1])
    probabilities = np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3]])
    metrics = classification_metrics(y, probabilities, classes)
    rows = misclassified_rows([f"{ODD}/x.png", "plain/y.png", "plain/z.png"], y, probabilities,
                              classes)  # fmt: skip
    with OutputFolder(tmp_path / "report") as report:
        write_report(report, metrics, f"title {ODD}", misclassified=rows, about={ODD: ODD})
    text, page = read_page(tmp_path / "report")
    assert ODD not in text
    assert "".join(page.text).count(ODD) >= 5  # title twice, about twice, table, captions
    assert [caption.split(" (")[1][:4] for caption in page.captions] == ["0.90", "0.70"]
