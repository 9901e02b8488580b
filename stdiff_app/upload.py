"""Sidebar upload of a Space Ranger sample as a .zip or .tar.gz archive."""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from stdiff import settings

logger = logging.getLogger(__name__)

# Streamlit matches the end of the file name, so "gz" also admits ".tar.gz".
UPLOAD_TYPES = ["zip", "tgz", "gz"]
# session_state key: {upload file_id: unpacked sample folder}, so reruns of the page do not hash the upload again.
UNPACKED_KEY = "upload_unpacked_folders"


def upload_sample_widget() -> str | None:
    """Draw a sidebar uploader for a zipped or tarred Space Ranger sample; return its unpacked folder or None.

    The archive is unpacked by :func:`stdiff.io.archive.extract_archive` under
    :func:`stdiff.settings.uploads_dir`, keyed by its SHA-256, so uploading the same file again does not
    unpack it again. Errors are shown with ``st.sidebar.error`` (message only) and None is returned.
    """
    from stdiff.io.archive import extract_archive

    max_upload_mb = st.get_option("server.maxUploadSize")
    uploaded = st.sidebar.file_uploader(
        "Upload a sample (.zip, .tar.gz)",
        type=UPLOAD_TYPES,
        key="upload_sample_archive",
        help=(
            f"A zip or tar.gz of a Space Ranger outs folder, or of the files in it, up to {max_upload_mb} MB. "
            "For larger samples, copy them to a folder on the server and enter that folder as the data folder."
        ),
    )
    if uploaded is None:
        return None

    unpacked = st.session_state.setdefault(UNPACKED_KEY, {})
    known = unpacked.get(uploaded.file_id)
    if known is not None and Path(known).is_dir():
        return known
    try:
        with st.spinner(f"Unpacking {uploaded.name}…"):
            folder = str(extract_archive(uploaded, settings.uploads_dir(), name=uploaded.name))
    except (ValueError, FileNotFoundError) as error:
        # ValueError covers ArchiveError, VisiumReadError and invalid upload caps in the environment.
        logger.warning("Upload %s rejected: %s", uploaded.name, error)
        st.sidebar.error(f"Could not use `{uploaded.name}`: {error}")
        return None
    except OSError as error:
        logger.error("Unpacking upload %s failed: %s", uploaded.name, error)
        st.sidebar.error(
            f"Could not unpack `{uploaded.name}`: {error}. Check the free disk space in {settings.uploads_dir()}."
        )
        return None
    unpacked[uploaded.file_id] = folder
    return folder
