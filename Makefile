# One-command entry points; each sets up what it needs first.
.PHONY: setup app test lint bench clean

setup:
	@bash scripts/setup.sh

app: setup
	.venv/bin/streamlit run app/streamlit_app.py --server.headless true --browser.gatherUsageStats false --server.maxUploadSize 20

lint: setup
	.venv/bin/ruff check tiviz app tests benchmarks
	.venv/bin/mypy

test: setup
	@bash scripts/setup-browser.sh
	.venv/bin/ruff check tiviz app tests benchmarks
	.venv/bin/mypy
	.venv/bin/python -m pytest -q

clean:
	rm -rf .venv .pytest_cache .ruff_cache .mypy_cache
