"""Streamlit-side helpers of the stdiff app: cached loaders, shared sidebar and figures.

The science lives in :mod:`stdiff`; this package only caches and draws it.
"""
