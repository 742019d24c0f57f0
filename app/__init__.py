"""The tiviz Streamlit app (a face over the library; the library never imports it)."""
