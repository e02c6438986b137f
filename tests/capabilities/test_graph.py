"""capabilities.graph (DOT text) and ``l4emu graph`` (l4emu.check.graph_image)."""
from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from capabilities.analysis import Analysis
from capabilities.graph import quote, render_dot
from kernel_model.host.images import load_image
from l4emu import check

HERE = Path(__file__).parent
HELLO = HERE.parents[1] / "images" / "hello.yaml"
CORPUS = sorted((HERE / "analysis_images").glob("*.yaml")) + [HELLO]
EDGE = re.compile(r'^  "(?P<src>[^"]+)" -> "(?P<dst>[^"]+)" \[(?P<attrs>.*)\];$')


def edges(text: str) -> dict[tuple[str, str, str], str]:
    """(source, target, label) -> attribute text, for every edge line."""
    out = {}
    for line in text.splitlines():
        m = EDGE.match(line)
        if m:
            found = re.search(r'label="((?:[^"\\]|\\.)*)"', m["attrs"])
            assert found is not None, line
            label = found[1]
            out[(m["src"], m["dst"], label)] = m["attrs"]
    return out


def hello_dot(**kw) -> str:
    image = load_image(HELLO).image
    return render_dot(image, Analysis(image), **kw)


def test_tasks_are_boxes_and_objects_have_one_shape_per_type():
    text = hello_dot()
    assert '"task:server" [shape="box"' in text and '"task:client" [shape="box"' in text
    for obj, shape in (("ping", "ellipse"), ("shm", "cylinder"), ("kick", "diamond"), ("done", "diamond"),
                       ("rom", "folder")):
        assert f'"obj:{obj}" [shape="{shape}"' in text, obj
    assert 'label="rom\\nnamespace\\nmodules: greeting"' in text


def test_every_declared_cap_is_one_edge_pointing_the_way_requests_travel():
    got = edges(hello_dot())
    assert set(got) == {
        ("obj:ping", "task:server", "ping\\nsvr"), ("task:client", "obj:ping", "ping\\nrw"),
        ("task:server", "obj:shm", "shm\\nrw"), ("task:client", "obj:shm", "shm\\nrw"),
        ("obj:kick", "task:server", "kick\\nrws"), ("task:client", "obj:kick", "kick\\nr"),
        ("task:server", "obj:done", "done\\nr"), ("obj:done", "task:client", "done\\nrws"),
        ("obj:rom", "task:client", "rom\\nr"),
    }
    bold = {key[:2] for key, attrs in got.items() if 'style="bold"' in attrs}
    assert bold == {("obj:ping", "task:server"), ("obj:kick", "task:server"), ("obj:done", "task:client")}
    assert 'dir="both"' in got[("task:server", "obj:shm", "shm\\nrw")]
    assert 'color="#1f5fbf"' in got[("task:client", "obj:ping", "ping\\nrw")]  # gate blue
    assert 'color="#d9730d"' in got[("task:client", "obj:kick", "kick\\nr")]  # irq orange


def test_a_read_only_dataspace_points_at_its_reader():
    image = load_image(HERE / "analysis_images" / "ro_dataspace.yaml").image
    got = edges(render_dot(image))
    assert ("obj:feed", "task:consumer", "feed\\nr") in got and ("task:producer", "obj:feed", "feed\\nrw") in got


def test_obtainable_caps_are_dashed_and_only_on_request():
    assert "dashed" not in hello_dot()
    dashed = {key for key, attrs in edges(hello_dot(obtainable=True)).items() if "dashed" in attrs}
    # without S nothing obtained can be bound, so every obtained cap points from its holder (a client's edge)
    assert dashed == {("obj:rom", "task:server", "obtainable\\nr"), ("task:server", "obj:done", "obtainable\\nrw"),
                      ("task:client", "obj:ping", "obtainable\\nrwdc"), ("task:client", "obj:kick", "obtainable\\nrw")}


def test_caps_with_an_error_finding_are_red():
    image = load_image(HERE / "analysis_images" / "lint_gate_two_servers.yaml").image
    got = edges(render_dot(image, Analysis(image)))
    red = {key for key, attrs in got.items() if "#d62728" in attrs}
    assert red == {("obj:g", "task:b", "g\\nsvr")}
    assert "#d62728" not in render_dot(image)  # without an analysis there are no findings to show


def test_quote_escapes_what_dot_would_misread():
    assert quote('a "b" \\ c\nd') == '"a \\"b\\" \\\\ c\\nd"'


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_output_is_deterministic_and_valid_dot(path):
    image = load_image(path).image
    text = render_dot(image, Analysis(image), obtainable=True)
    assert text == render_dot(load_image(path).image, Analysis(load_image(path).image), obtainable=True)
    if shutil.which("dot"):
        done = subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True, check=False)
        assert done.returncode == 0, done.stderr.decode()


# ---------------------------------------------------------------------- graph_image
def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None, highlight=False), out


def test_graph_image_writes_dot_text(tmp_path):
    con, out = console()
    assert check.graph_image(HELLO, tmp_path / "hello.dot", console=con) == 0
    assert (tmp_path / "hello.dot").read_text() == hello_dot()
    assert out.getvalue() == f"wrote {tmp_path / 'hello.dot'}\n"


def test_graph_image_dash_prints_the_dot_text():
    con, out = console()
    assert check.graph_image(HELLO, "-", console=con) == 0
    assert out.getvalue() == hello_dot()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot is not installed")
def test_graph_image_draws_svg_and_png_with_dot(tmp_path):
    con, _ = console()
    assert check.graph_image(HELLO, tmp_path / "hello.svg", console=con) == 0
    assert "<svg" in (tmp_path / "hello.svg").read_text() and "ping" in (tmp_path / "hello.svg").read_text()
    assert check.graph_image(HELLO, tmp_path / "out.img", "png", console=con) == 0
    assert (tmp_path / "out.img").read_bytes().startswith(b"\x89PNG")


def test_without_dot_graph_image_writes_dot_instead_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(check.shutil, "which", lambda name: None)
    con, out = console()
    assert check.graph_image(HELLO, tmp_path / "hello.svg", console=con) == 1
    assert not (tmp_path / "hello.svg").exists() and (tmp_path / "hello.dot").read_text() == hello_dot()
    assert "Graphviz 'dot' is not on PATH" in out.getvalue() and "hello.dot" in out.getvalue()


def test_graph_image_rejects_an_unknown_format(tmp_path):
    con, out = console()
    assert check.graph_image(HELLO, tmp_path / "hello.jpg", console=con) == 2
    assert "unknown graph format 'jpg'" in out.getvalue() and not (tmp_path / "hello.jpg").exists()
