"""Theory: the project's docs/theory.md, one numbered section at a time (?section=n opens that one)."""

from __future__ import annotations

from ui.shell import guard

guard()  # opened by its URL in a fresh session: run inside the app frame

import streamlit as st

from backend import api

sections = api.theory_sections()
st.title("Theory: the mathematics behind the numbers")
st.markdown(api.theory_preamble())
wanted = st.query_params.get("section", "0")
numbers = list(sections)
start = numbers.index(int(wanted)) if wanted.isdigit() and int(wanted) in sections else 0
chosen = st.radio("Section", numbers, index=start, horizontal=True,
                  format_func=lambda n: f"§{n} {sections[n][0]}", key="theory_section")
if st.query_params.get("section") != str(chosen):
    st.query_params["section"] = str(chosen)


def draw(markdown: str) -> None:
    """A section's Markdown with its display formulas drawn by st.latex (inline $…$ math renders in st.markdown)."""
    for kind, text in api.display_math_pieces(markdown):
        if kind == "latex":
            st.latex(text)
        else:
            st.markdown(text)


title, body = sections[chosen]
st.header(f"§{chosen} {title}")
draw(body)
with st.expander("Every section on one page"):
    for n, (title, body) in sections.items():
        st.subheader(f"§{n} {title}")
        draw(body)
