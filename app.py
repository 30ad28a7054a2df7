"""batchvar: how the mini-batch size b shapes the dynamics of SGD. Run with ``streamlit run app.py``."""

import streamlit as st

from backend import api

st.set_page_config(page_title="batchvar", page_icon="📉", layout="wide")

# one page per registered setting (pages/<name>.py), then the advisor and the theory
PAGES = [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
         *(st.Page(f"pages/{s['name']}.py", title=s["title"], icon=s["icon"], url_path=s["name"])
           for s in api.setting_pages()),
         st.Page("pages/advisor.py", title="Batch-size advisor", icon=":material/tune:", url_path="advisor"),
         st.Page("pages/sweeps.py", title="Sweeps", icon=":material/grid_on:", url_path="sweeps"),
         st.Page("pages/theory.py", title="Theory", icon=":material/functions:", url_path="theory")]

page = st.navigation(PAGES, position="hidden")
with st.sidebar:
    for p in PAGES:
        st.page_link(p)
    st.divider()
page.run()
