"""mkdocs hook: typeset the site's math offline, with MathJax shipped by a Python package (no CDN).

MathJax 2.7 comes from the `jupyter-server-mathjax` package (a dev dependency: the same files Jupyter serves to
its notebooks). on_files copies them into the site under assets/mathjax/, with a small configuration of our own
that picks the STIX-Web fonts the package ships. Two kinds of pages load it from there:
- the lessons, rendered by mkdocs-jupyter: `custom_mathjax_url` in mkdocs.yml points at ../../assets/mathjax/
  (every lesson page sits two folders deep, at lessons/<name>/); nbconvert's template adds the $...$ settings;
- Markdown pages whose math pymdownx.arithmatex has marked (\\( ... \\) and \\[ ... \\]): on_page_content adds the
  script to those pages only.
"""
from __future__ import annotations

import pathlib

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.utils import get_relative_url

ASSETS = "assets/mathjax"
CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe,local/minilora"
LOCAL_CONFIG = """\
MathJax.Hub.Config({
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null},
  messageStyle: "none"
});
MathJax.Ajax.loadComplete("[MathJax]/config/local/minilora.js");
"""


def mathjax_files() -> pathlib.Path:
    """The folder of MathJax.js inside the installed jupyter-server-mathjax package."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise PluginError("the site typesets math with the MathJax files of the `jupyter-server-mathjax` package, "
                          "which is not installed: pip install -e '.[dev]' (or `make setup`)") from None
    static = pathlib.Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (static / "MathJax.js").is_file():
        raise PluginError(f"jupyter-server-mathjax is installed but {static}/MathJax.js is missing: reinstall it")
    return static


def on_config(config):
    jupyter = config["plugins"].get("mkdocs-jupyter")
    url = jupyter.config.get("custom_mathjax_url", "") if jupyter is not None else ""
    if jupyter is not None and not url.startswith(f"../../{ASSETS}/MathJax.js"):
        raise PluginError(f"mkdocs-jupyter's custom_mathjax_url is {url!r}: set it to "
                          f"'../../{ASSETS}/MathJax.js?config={CONFIG}' so the lessons' math renders offline")
    return config


def on_files(files: Files, config) -> Files:
    static = mathjax_files()
    for path in sorted(p for p in static.rglob("*") if p.is_file()):
        files.append(File.generated(config, f"{ASSETS}/{path.relative_to(static).as_posix()}",
                                    abs_src_path=str(path)))
    files.append(File.generated(config, f"{ASSETS}/config/local/minilora.js", content=LOCAL_CONFIG))
    return files


def on_page_content(html: str, page, config, files) -> str:
    if 'class="arithmatex"' not in html:
        return html
    src = get_relative_url(f"{ASSETS}/MathJax.js", page.file.url)
    return html + f'\n<script src="{src}?config={CONFIG}"></script>\n'
