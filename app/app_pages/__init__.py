"""The app's pages (one file each, listed in `app/streamlit_app.py`) and the widgets they are built from, one
module per concern: `pickers` (sidebar, models, methods, runs, the selections pages share), `long_work`
(attribution and scores under a progress bar), `pair_view`, `compare_view`, `training_view`, `export_view`."""
