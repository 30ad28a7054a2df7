"""batchvar: how the mini-batch size b shapes the dynamics of SGD. Run with ``streamlit run app.py``."""

from ui.shell import run

run()
