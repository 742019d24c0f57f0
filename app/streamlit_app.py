"""tiviz in the browser: inspect, compare and train. Run with `make app` or `tiviz app`.

The model is the offline default (SmolLM2-135M-Instruct) unless $TIVIZ_APP_MODEL names another; runs live in
$TIVIZ_RUNS_DIR (default runs/).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning. On a CPU shared with other work (a laptop, CI, several users)
# spinning threads compete with it for the cores (`benchmarks/app_first_heatmap.py --compare-active` measures
# the difference). Read when torch loads, so it must come first; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run app/streamlit_app.py` puts only app/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app.app_pages import pickers, training_view  # noqa: E402

st.set_page_config(page_title="tiviz", page_icon=":material/search:", layout="wide")

pages = st.navigation([
    st.Page("app_pages/inspect_pair.py", title="Inspect", icon=":material/search:", url_path="inspect", default=True),
    st.Page("app_pages/methods.py", title="Methods", icon=":material/compare_arrows:", url_path="methods"),
    st.Page("app_pages/distributions.py", title="Distributions", icon=":material/bar_chart:", url_path="distributions"),
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page("app_pages/before_after.py", title="Before / after", icon=":material/difference:", url_path="before-after"),
    st.Page("app_pages/export.py", title="Export", icon=":material/download:", url_path="export"),
])
pickers.sidebar()
training_view.job_sidebar()
pages.run()
