"""The Streamlit viewer (`tumorseg app`) and its Streamlit-free helpers (support.py)."""
