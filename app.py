"""batchvar: how the mini-batch size b shapes the dynamics of SGD. Run with ``streamlit run app.py``."""

import streamlit as st

st.set_page_config(page_title="batchvar", page_icon="📉", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/linear_regression.py", title="Linear regression", icon=":material/show_chart:",
            url_path="linear_regression"),
    st.Page("pages/deep_linear.py", title="Deep linear network", icon=":material/account_tree:",
            url_path="deep_linear"),
    st.Page("pages/mlp.py", title="MLP classifier", icon=":material/hub:", url_path="mlp"),
    st.Page("pages/sequence.py", title="Sequence model (Adam)", icon=":material/notes:", url_path="sequence"),
    st.Page("pages/theory.py", title="Theory", icon=":material/functions:", url_path="theory"),
]

page = st.navigation(PAGES, position="hidden")
with st.sidebar:
    for p in PAGES:
        st.page_link(p)
    st.divider()
page.run()
