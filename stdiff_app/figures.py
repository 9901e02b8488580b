"""Plotly figures of the tissue: the H&E image with spots drawn over it."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from stdiff.constants import HIRES_SCALEF, LOWRES_SCALEF, SPATIAL_KEY

MAX_BACKGROUND_SIDE = 1200  # pixels of the H&E background image sent to the browser


@dataclass(frozen=True)
class Background:
    """An H&E image for the browser and how full-resolution pixels map onto it."""

    uri: str | None  # JPEG data URI, None when the sample has no hires or lowres image
    factor: float  # background pixels per full-resolution pixel
    width: int
    height: int


def background_image(adata) -> Background:
    """Return the hires (else lowres) image of the sample, shrunk to at most ``MAX_BACKGROUND_SIDE`` pixels."""
    library = next(iter(adata.uns[SPATIAL_KEY].values()))
    images, scalefactors = library.get("images", {}), library.get("scalefactors", {})
    for key, factor_key in (("hires", HIRES_SCALEF), ("lowres", LOWRES_SCALEF)):
        if key in images and factor_key in scalefactors:
            image = Image.fromarray(np.asarray(images[key])).convert("RGB")
            shrink = min(1.0, MAX_BACKGROUND_SIDE / max(image.size))
            if shrink < 1.0:
                image = image.resize((round(image.width * shrink), round(image.height * shrink)), Image.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
            uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
            return Background(uri, float(scalefactors[factor_key]) * shrink, image.width, image.height)
    xy = np.asarray(adata.obsm[SPATIAL_KEY])
    return Background(None, 1.0, int(xy[:, 0].max()) + 1, int(xy[:, 1].max()) + 1)


def tissue_figure(adata, *, background: Background, values=None, colorbar_title: str = "", cmin=None,
                  cmax=None, height: int = 620, selected: str | None = None, marker_size: int = 9) -> go.Figure:
    """Spots over the H&E image, coloured by ``values`` (one per spot) when given.

    Each point's customdata is its barcode, so a click (``on_select``) identifies the spot.
    """
    xy = np.asarray(adata.obsm[SPATIAL_KEY]) * background.factor
    barcodes = adata.obs_names.to_numpy()
    marker = dict(size=marker_size, line=dict(width=0.5, color="white"), opacity=0.85)
    if values is not None:
        marker.update(color=np.asarray(values), colorscale="Viridis", cmin=cmin, cmax=cmax, showscale=True,
                      colorbar=dict(title=colorbar_title, thickness=12))
        hover = "%{customdata}<br>%{marker.color:.2f}<extra></extra>"
    else:
        marker.update(color="rgba(0, 180, 255, 0.35)")
        hover = "%{customdata}<extra></extra>"
    figure = go.Figure(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", marker=marker, customdata=barcodes,
                                  hovertemplate=hover, name="spots"))
    if selected is not None:
        match = np.flatnonzero(barcodes == selected)
        if len(match):
            figure.add_trace(go.Scatter(
                x=xy[match, 0], y=xy[match, 1], mode="markers", hoverinfo="skip", name="selected",
                marker=dict(size=marker_size + 8, color="rgba(0,0,0,0)", line=dict(width=3, color="red")),
            ))
    if background.uri is not None:
        figure.add_layout_image(dict(source=background.uri, xref="x", yref="y", x=0, y=0, sizex=background.width,
                                     sizey=background.height, sizing="stretch", layer="below"))
    figure.update_xaxes(range=[0, background.width], visible=False, constrain="domain")
    figure.update_yaxes(range=[background.height, 0], visible=False, scaleanchor="x", scaleratio=1)
    figure.update_layout(height=height, margin=dict(l=0, r=0, t=10, b=0), showlegend=False, dragmode="pan",
                         plot_bgcolor="white")
    return figure
