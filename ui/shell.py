"""The app's frame: page config, the navigation (one page per registered setting, then the advisor, the sweeps and
the theory) with its links in the sidebar, and the page itself.

A fresh browser session that opens a page by its URL (``/theory``) makes Streamlit run ``pages/theory.py`` on its
own, without ``app.py`` (the ``pages/`` folder beside the entry point): no page config and no navigation. Every page
therefore starts with ``guard()``: run on its own, it runs the frame instead, which runs the page inside it."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import streamlit as st

from backend import api

_inside = threading.local()  # set while the frame runs a page (one script run per thread)


@dataclass(frozen=True)
class NavPage:
    """One page of the app: its script, title (also the browser tab's), icon, URL path ("" for Home, the default
    page) and its card, the line that Home shows after the title."""

    path: str
    title: str
    icon: str
    url_path: str
    card: str


HOME = NavPage("pages/home.py", "Home", ":material/home:", "",
               "The paper's claims in plain words and formulas, and a link to every page")


def nav_pages() -> list[NavPage]:
    """The app's pages in navigation order: Home, one per registered setting (its card from its settings module),
    the advisor, the sweeps, the theory. The navigation, the sidebar's links and Home's list are all built from it."""
    return [HOME,
            *(NavPage(f"pages/{s['name']}.py", s["title"], s["icon"], s["name"], s["card"])
              for s in api.setting_pages()),
            NavPage("pages/advisor.py", "Batch-size advisor", ":material/tune:", "advisor",
                    "I can afford N gradient evaluations: which b, and how should the learning rate scale with it? "
                    "Exact for linear regression, replica runs for the other settings"),
            NavPage("pages/critical_batch.py", "Critical batch size", ":material/call_split:", "critical_batch",
                    "Branch the run at checkpoints into k·b with a scaled learning rate: the largest b that keeps "
                    "the loss, along training, beside the noise scales B_simple and B_noise — exact for linear "
                    "regression"),
            NavPage("pages/sweeps.py", "Sweeps", ":material/grid_on:", "sweeps",
                    "A grid of replica runs over any config fields, in this process or on Ray; any quantity against "
                    "any swept field, with 95 % intervals"),
            NavPage("pages/theory.py", "Theory", ":material/functions:", "theory",
                    "The mathematics behind every number: conventions, the exact recursions, the variance split, the "
                    "standard errors and how each is checked")]


def pages() -> list:
    """The navigation's st.Page objects, one per ``nav_pages()`` entry."""
    return [st.Page(p.path, title=p.title, icon=p.icon, default=True) if p.url_path == "" else
            st.Page(p.path, title=p.title, icon=p.icon, url_path=p.url_path) for p in nav_pages()]


def run() -> None:
    """The frame: page config, navigation, the sidebar's links, then the chosen page."""
    listed = pages()
    page = st.navigation(listed, position="hidden")
    try:
        title = f"{page.title} · batchvar"
    except AttributeError:  # bare mode (the script run without a Streamlit runtime): the Page has no title
        title = "batchvar"
    st.set_page_config(page_title=title, page_icon="📉", layout="wide")  # the browser tab
    with st.sidebar:
        for p in listed:
            st.page_link(p)
        st.divider()
    _inside.running = True
    try:
        page.run()
    finally:
        _inside.running = False


def guard() -> None:
    """First line of every page: a page that Streamlit runs on its own (a fresh session's deep link) runs the frame
    instead, and stops."""
    if not getattr(_inside, "running", False):
        run()
        st.stop()
