"""The Tissue page's viewer: the H&E image at the zoom the user picks, with spots at their physical size.

The server sends the browser one JPEG of the visible window only, stitched from the tiles of a
level-of-detail pyramid (:mod:`stdiff.tiles`) cached on disk. Zooming and panning happen on the server, so
the spots can be drawn at their true diameter: the browser's own zoom would scale the image but not the
markers.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from stdiff import settings
from stdiff.constants import SCALEFACTORS_KEY, SPATIAL_KEY, SPOT_DIAMETER_FULLRES

from .loaders import load_sample

VIEW_SIZE = 560  # pixels of the longer side of the viewer
VISIUM_DIAMETER_TO_PITCH = 55 / 100  # Visium spots are 55 µm wide on a 100 µm centre-to-centre grid


# A JPEG or PNG pyramid keeps its decoded image (about 0.3 GB for 10,000 x 10,000 pixels) for new tiles, so only
# the two most recent samples keep one.
@st.cache_resource(show_spinner="Opening the full-resolution image…", max_entries=2)
def tile_pyramid(sample_dir: str, stored_only: bool = False):
    """Return the sample's image pyramid; ``stored_only`` uses the hires (else lowres) image instead of the
    full-resolution file."""
    from stdiff.io import open_tissue_image
    from stdiff.tiles import TilePyramid

    adata = load_sample(sample_dir)
    library = next(iter(adata.uns.get(SPATIAL_KEY, {}).values()), {})
    if not library.get("metadata", {}).get("fullres_path") and not library.get("images"):
        xy = np.asarray(adata.obsm[SPATIAL_KEY], dtype=np.float64)
        margin = spot_diameter(adata)[0]
        return TilePyramid(BlankImage(int(xy[:, 0].max() + margin) + 1, int(xy[:, 1].max() + margin) + 1))
    image = open_tissue_image(adata, stored_only=stored_only)
    return TilePyramid(image, settings.tiles_dir())


class BlankImage:
    """A white stand-in for a sample without any tissue image, so that its spots can still be drawn."""

    source = "blank"
    scale = 1.0
    path = None

    def __init__(self, width: int, height: int) -> None:
        self.width_fullres, self.height_fullres = width, height

    def read_region(self, left, top, right, bottom, *, out_width: int, out_height: int) -> np.ndarray:
        return np.full((out_height, out_width, 3), 255, dtype=np.uint8)


@st.cache_data(show_spinner="Drawing the image at this zoom…", max_entries=64)
def window_image_uri(sample_dir: str, left: float, top: float, right: float, bottom: float, width: int,
                     height: int, stored_only: bool = False) -> str:
    """Return the window as a JPEG data URI, as the browser receives it."""
    pyramid = tile_pyramid(sample_dir, stored_only)
    pixels = pyramid.view(left, top, right, bottom, out_width=width, out_height=height)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass(frozen=True)
class Window:
    """Part of the image in view, in full-resolution pixels, and its size on screen."""

    left: float
    top: float
    right: float
    bottom: float
    width: int  # screen pixels
    height: int
    zoom: int
    level: int  # pyramid level the pixels come from (0: full resolution)

    @property
    def downsample(self) -> float:
        """Full-resolution pixels per screen pixel."""
        return (self.right - self.left) / self.width

    @property
    def centre(self) -> tuple[float, float]:
        return (self.left + self.right) / 2, (self.top + self.bottom) / 2


def zoom_steps(image_width: int, image_height: int, view_size: int = VIEW_SIZE) -> list[int]:
    """Zoom factors from the whole image (1) up to the first that shows full-resolution pixels one to one."""
    fit = max(image_width, image_height) / view_size
    steps = [1]
    while fit / steps[-1] > 1:
        steps.append(steps[-1] * 2)
    return steps


def make_window(pyramid, zoom: int, centre: tuple[float, float] | None, view_size: int = VIEW_SIZE) -> Window:
    """Return the window at ``zoom`` around ``centre`` (full-resolution x, y), kept inside the image."""
    width, height = pyramid.width, pyramid.height
    downsample = max(width, height) / view_size / zoom
    if zoom == 1 or centre is None:
        centre = (width / 2, height / 2)
    if zoom == 1:
        screen_width, screen_height = max(1, round(width / downsample)), max(1, round(height / downsample))
    else:
        screen_width = screen_height = view_size
    half_width, half_height = screen_width * downsample / 2, screen_height * downsample / 2
    x = min(max(centre[0], half_width), max(half_width, width - half_width))
    y = min(max(centre[1], half_height), max(half_height, height - half_height))
    return Window(left=x - half_width, top=y - half_height, right=x + half_width, bottom=y + half_height,
                  width=int(screen_width), height=int(screen_height), zoom=zoom,
                  level=pyramid.level_for(downsample))


def spot_diameter(adata) -> tuple[float, str]:
    """Spot diameter in full-resolution pixels and where it comes from.

    Space Ranger's ``spot_diameter_fullres`` when present, otherwise 55% of the distance to the nearest
    neighbouring spot (the Visium ratio of spot size to spot pitch).
    """
    library = next(iter(adata.uns.get(SPATIAL_KEY, {}).values()), {})
    value = library.get(SCALEFACTORS_KEY, {}).get(SPOT_DIAMETER_FULLRES)
    if value is not None and math.isfinite(float(value)) and float(value) > 0:
        return float(value), "spot_diameter_fullres in scalefactors_json.json"
    xy = np.asarray(adata.obsm[SPATIAL_KEY], dtype=np.float64)
    if len(xy) < 2:
        return 100.0, "a default of 100 full-resolution pixels (one spot, no scalefactor)"
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(xy).query(xy, k=2)
    pitch = float(np.median(distances[:, 1]))
    return pitch * VISIUM_DIAMETER_TO_PITCH, "55% of the median distance between neighbouring spots"


def viewer_figure(adata, window: Window, image_uri: str, *, diameter: float, values=None, colour_title: str = "",
                  cmin=None, cmax=None, focus: str | None = None, group=(), opacity: float = 0.35) -> go.Figure:
    """Spots in ``window`` over its image, each a circle of ``diameter`` full-resolution pixels.

    Points carry their barcode as customdata, so clicks and lasso selections name spots.
    """
    # Pixel i spans [i, i + 1) on the image, so a spot at pixel x is drawn at x + 0.5.
    xy = np.asarray(adata.obsm[SPATIAL_KEY], dtype=np.float64) + 0.5
    barcodes = adata.obs_names.to_numpy()
    margin = diameter
    inside = ((xy[:, 0] > window.left - margin) & (xy[:, 0] < window.right + margin)
              & (xy[:, 1] > window.top - margin) & (xy[:, 1] < window.bottom + margin))
    size = max(3.0, diameter / window.downsample)
    marker = dict(size=size, opacity=1.0, line=dict(width=1 if size > 6 else 0, color="rgba(255,255,255,0.8)"))
    if values is not None:
        values = np.asarray(values, dtype=np.float64)
        marker.update(color=values[inside], colorscale="Viridis", cmin=cmin, cmax=cmax, showscale=True,
                      colorbar=dict(title=colour_title, thickness=12), opacity=max(opacity, 0.2))
        hover = "%{customdata}<br>" + (colour_title or "value") + ": %{marker.color:.3g}<extra></extra>"
    else:
        marker.update(color=f"rgba(0, 170, 255, {opacity})")
        hover = "%{customdata}<extra></extra>"
    figure = go.Figure(go.Scatter(x=xy[inside, 0], y=xy[inside, 1], mode="markers", marker=marker,
                                  customdata=barcodes[inside], hovertemplate=hover, name="spots"))
    for chosen, colour, name in ((list(group), "#ffd400", "lasso"), ([focus] if focus else [], "red", "selected")):
        match = np.flatnonzero(np.isin(barcodes, chosen) & inside)
        if len(match):
            figure.add_trace(go.Scatter(
                x=xy[match, 0], y=xy[match, 1], mode="markers", hoverinfo="skip", name=name,
                marker=dict(size=size + 6, color="rgba(0,0,0,0)", line=dict(width=3, color=colour)),
            ))
    figure.add_layout_image(dict(source=image_uri, xref="x", yref="y", x=window.left, y=window.top,
                                 sizex=window.right - window.left, sizey=window.bottom - window.top,
                                 sizing="stretch", layer="below"))
    figure.update_xaxes(range=[window.left, window.right], visible=False, fixedrange=True)
    figure.update_yaxes(range=[window.bottom, window.top], visible=False, fixedrange=True)
    # Colour bars take room to the right of the image; the plot area keeps the window's exact pixel size.
    # The chart's toolbar appears above the plot area on hover, clear of the image and the colour bar.
    right_margin, top_margin = (90, 28) if values is not None else (0, 28)
    figure.update_layout(width=window.width + right_margin, height=window.height + top_margin, autosize=False,
                         margin=dict(l=0, r=right_margin, t=top_margin, b=0), showlegend=False, dragmode=False,
                         plot_bgcolor="white")
    return figure


def selected_spots(event) -> tuple[list[str], bool]:
    """Barcodes chosen in a plotly selection event, and whether they came from a lasso or box."""
    if not event or not event.selection:
        return [], False
    selection = event.selection
    barcodes = []
    for point in selection.get("points", []):
        value = point.get("customdata")
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, str) and value not in barcodes:
            barcodes.append(value)
    by_area = bool(selection.get("lasso") or selection.get("box"))
    return barcodes, by_area
