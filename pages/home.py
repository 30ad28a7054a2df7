"""Home: the paper's claims in plain words and formulas, and a link to every page."""

from ui.shell import HOME, guard, nav_pages

guard()  # opened by its URL in a fresh session: run inside the app frame

import streamlit as st

st.title("batchvar — the mini-batch size and the dynamics of SGD")
st.markdown(
    """
Mini-batch SGD updates $w_{t+1} = w_t - \\alpha_t g_t$ with $g_t = \\frac1b \\sum_{i\\in B_t} \\nabla L_i(w_t)$.
Fix the initial weights $w_0$ and the learning rates; the only randomness left is which mini-batches are drawn.
How does the batch size $b$ shape what happens next? This app draws the **exact theory** over **replica
experiments** (many SGD runs from the same $w_0$), with honest confidence bands.

**The paper's claims** ("The impact of the mini-batch size on the dynamics of SGD: variance and beyond"):
"""
)
st.markdown("1. **One step (Lemma 1).** Given the current weights, the variance of the stochastic gradient is")
st.latex(r"\operatorname{var}(g_t \mid \mathcal F_t) = \frac{n-b}{b(n-1)}\Big(\frac1n\sum_i \|\nabla L_i(w_t)\|^2 - \|\nabla L(w_t)\|^2\Big).")
st.markdown(
    "2. **Every step, linear regression (Theorems 1–2).** Given only $w_0$, $\\operatorname{var}(g_t\\mid\\mathcal F_0)$ "
    "and $\\operatorname{var}(\\nabla L(w_t)\\mid\\mathcal F_0)$ are non-increasing in $b$ for every $t$: smaller batches, "
    "noisier gradients — at every iteration, not just the first. The variance is a polynomial in $1/b$ of degree "
    "$t+1$ with no constant term, and vanishes at $b = n$."
)
st.markdown(
    "3. **Deep linear networks (Theorems 4–5).** The variance of each layer's gradient is a polynomial "
    "$\\sum_{j\\ge1}\\beta_j b^{-j}$ in $1/b$ with no constant term, decreasing for $b$ above a threshold $b_0$."
)
st.markdown(
    "4. **Beyond (experiments).** Smaller batches give lower training loss but larger variance; the generalization "
    "gap grows with $b$ late in training; the ordering survives cross-entropy and Adam."
)
st.markdown(
    "We compute the variance **exactly for every $t$** in linear regression (a polynomial-time moment recursion; "
    "exact rational polynomials in $1/b$), and check each estimate against it with a $z$-score."
)
st.subheader("Pages")
for page in nav_pages():  # the navigation's own list: every page there is linked here
    if page != HOME:
        st.page_link(page.path, label=page.title, icon=page.icon)
        st.caption(page.card)  # a link's label is one line: the card goes beneath it
st.caption("Data: Graduate Admission 2 (Acharya, Armaan, Antony, IEEE ICCIDS 2019).")
