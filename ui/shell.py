"""The app's frame: page config, the navigation (one page per registered setting, then the advisor, the sweeps and
the theory) with its links in the sidebar, and the page itself.

A fresh browser session that opens a page by its URL (``/theory``) makes Streamlit run ``pages/theory.py`` on its
own, without ``app.py`` (the ``pages/`` folder beside the entry point): no page config and no navigation. Every page
therefore starts with ``guard()``: run on its own, it runs the frame instead, which runs the page inside it."""

from __future__ import annotations

import threading

import streamlit as st

from backend import api

_inside = threading.local()  # set while the frame runs a page (one script run per thread)


def pages() -> list:
    return [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
            *(st.Page(f"pages/{s['name']}.py", title=s["title"], icon=s["icon"], url_path=s["name"])
              for s in api.setting_pages()),
            st.Page("pages/advisor.py", title="Batch-size advisor", icon=":material/tune:", url_path="advisor"),
            st.Page("pages/sweeps.py", title="Sweeps", icon=":material/grid_on:", url_path="sweeps"),
            st.Page("pages/theory.py", title="Theory", icon=":material/functions:", url_path="theory")]


def run() -> None:
    """The frame: page config, navigation, the sidebar's links, then the chosen page."""
    st.set_page_config(page_title="batchvar", page_icon="📉", layout="wide")
    listed = pages()
    page = st.navigation(listed, position="hidden")
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
