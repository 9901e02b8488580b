"""Reader for Space Ranger spot position tables, and the one place pixel rows and columns become (x, y)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from stdiff.constants import POSITION_COLUMNS, POSITIONS_PARQUET, POSITIONS_V1, POSITIONS_V2
from stdiff.io.errors import VisiumReadError, warn
from stdiff.io.files import find_named

logger = logging.getLogger(__name__)

BARCODE_COLUMN = POSITION_COLUMNS[0]
NUMERIC_COLUMNS = POSITION_COLUMNS[1:]
INTEGER_COLUMNS = ("in_tissue", "array_row", "array_col")
PIXEL_ROW_COLUMN = "pxl_row_in_fullres"
PIXEL_COL_COLUMN = "pxl_col_in_fullres"

# Searched in this order; Space Ranger 2.0 and later write tissue_positions.csv, 1.x tissue_positions_list.csv.
POSITION_FILE_NAMES = (POSITIONS_V2, POSITIONS_V1, POSITIONS_PARQUET)


def find_positions_file(spatial_dir: Path) -> Path | None:
    """Return the first position table found in ``spatial_dir``, or None.

    Each name is also accepted with a prefix such as ``GSM5000001_`` and, for CSV files, gzipped (``.csv.gz``),
    as GEO serves them.
    """
    for name in POSITION_FILE_NAMES:
        candidates = (name, f"{name}.gz") if name.endswith(".csv") else (name,)
        for candidate in candidates:
            found = find_named(spatial_dir, candidate)
            if found is not None:
                return found
    return None


def fullres_xy(positions: pd.DataFrame) -> np.ndarray:
    """Convert spot pixel rows and columns to full-resolution (x, y) coordinates.

    This is the only place in stdiff where the conversion happens: x is the pixel column
    (``pxl_col_in_fullres``) and y the pixel row (``pxl_row_in_fullres``), both in full-resolution image
    pixels.

    Parameters
    ----------
    positions
        Table with the columns ``pxl_row_in_fullres`` and ``pxl_col_in_fullres``.

    Returns
    -------
    float64 array of shape (n_spots, 2) holding (x, y), as ``obsm["spatial"]`` stores it.
    """
    x = positions[PIXEL_COL_COLUMN].to_numpy(dtype=np.float64)
    y = positions[PIXEL_ROW_COLUMN].to_numpy(dtype=np.float64)
    return np.column_stack([x, y])


def read_positions(path: Path, *, notes: list[str] | None = None) -> pd.DataFrame:
    """Read a Space Ranger spot position table.

    Accepted layouts: ``tissue_positions_list.csv`` (Space Ranger 1.x, no header), ``tissue_positions.csv``
    (2.0 and later, with a header) and ``tissue_positions.parquet``. Whether a CSV file starts with a header
    is decided from its first row: a header has non-numeric values in all five coordinate columns, a data
    row has numbers in all of them, so no spot is dropped whatever the file is named.

    Parameters
    ----------
    path
        Position table file.
    notes
        When given, the text of every :class:`VisiumReadWarning` issued here is appended to it.

    Returns
    -------
    DataFrame indexed by barcode with the integer columns ``in_tissue``, ``array_row``, ``array_col`` and
    the float64 columns ``pxl_row_in_fullres``, ``pxl_col_in_fullres`` (full-resolution pixels).

    Raises
    ------
    VisiumReadError
        When the file cannot be parsed, lacks a column, contains a non-numeric or missing coordinate, or
        repeats a barcode.
    """
    if path.suffix == ".parquet":
        table, first_line = _read_parquet(path), 0
    else:
        table, first_line = _read_csv(path, notes=notes)
    return _validate(table, path=path, first_line=first_line)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError, ImportError) as error:
        raise VisiumReadError(
            f"Could not read {path} as a Parquet table: {error}. Expected the tissue_positions.parquet that "
            "Space Ranger writes.",
            path=path,
        ) from error
    missing = [column for column in POSITION_COLUMNS if column not in table.columns]
    if missing:
        raise VisiumReadError(
            f"{path} lacks the columns {missing}; found {list(table.columns)}. Expected "
            f"{list(POSITION_COLUMNS)}.",
            path=path,
        )
    return table[list(POSITION_COLUMNS)].astype({column: str for column in POSITION_COLUMNS})


def _read_csv(path: Path, *, notes: list[str] | None) -> tuple[pd.DataFrame, int]:
    """Read a position CSV as strings; return the table and the file line number of its first data row."""
    try:
        raw = pd.read_csv(
            path,
            header=None,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError as error:
        raise VisiumReadError(
            f"{path} is empty. Expected one row per spot: {', '.join(POSITION_COLUMNS)}. Copy the file again "
            "from the Space Ranger output.",
            path=path,
        ) from error
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise VisiumReadError(
            f"Could not parse {path} as CSV: {error}. Expected one row per spot with the six columns "
            f"{', '.join(POSITION_COLUMNS)}.",
            path=path,
        ) from error

    if raw.shape[1] != len(POSITION_COLUMNS):
        raise VisiumReadError(
            f"{path} has {raw.shape[1]} columns; expected {len(POSITION_COLUMNS)} "
            f"({', '.join(POSITION_COLUMNS)}). First row: {raw.iloc[0].tolist()}.",
            path=path,
        )

    first_row = raw.iloc[0, 1:]
    is_number = pd.to_numeric(first_row, errors="coerce").notna()
    if is_number.all():
        raw.columns = list(POSITION_COLUMNS)
        return raw, 1
    if is_number.any():
        raise VisiumReadError(
            f"The first row of {path} is neither a header nor a spot: {raw.iloc[0].tolist()}. Coordinate "
            f"columns must all be numbers (a spot) or all be names (a header such as "
            f"{', '.join(POSITION_COLUMNS)}). Fix the row.",
            path=path,
        )

    header = [str(name).strip() for name in raw.iloc[0]]
    table = raw.iloc[1:].reset_index(drop=True)
    if set(POSITION_COLUMNS) <= set(header):
        table.columns = header
        table = table[list(POSITION_COLUMNS)]
    else:
        warn(
            f"{path} has the header {header} instead of {list(POSITION_COLUMNS)}; reading its columns in Space "
            "Ranger order. Check that the coordinates land on the tissue.",
            notes=notes,
        )
        table.columns = list(POSITION_COLUMNS)
    return table, 2


def _parse_floats(strings: pd.Series) -> np.ndarray:
    """Parse strings as float64, with NaN for values that are not numbers.

    NumPy's conversion is tried first because it rounds correctly, so coordinates match the file to the last
    bit. ``pd.to_numeric`` can differ by one unit in the last place.
    """
    try:
        return strings.str.strip().to_numpy(dtype=np.float64)
    except ValueError:
        return pd.to_numeric(strings.str.strip(), errors="coerce").to_numpy(dtype=np.float64)


def _validate(table: pd.DataFrame, *, path: Path, first_line: int) -> pd.DataFrame:
    """Convert the string table to numbers, raising on the first bad value with its line number."""
    if table.empty:
        raise VisiumReadError(
            f"{path} lists no spots, only a header. Expected one row per spot; copy the file again from the "
            "Space Ranger output.",
            path=path,
        )

    numbers = {}
    for column in NUMERIC_COLUMNS:
        values = _parse_floats(table[column])
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            where = "line" if first_line else "row"
            row = int(bad[0])
            raise VisiumReadError(
                f"{path} has a non-numeric or missing {column} value {table[column].iloc[row]!r} at {where} "
                f"{row + first_line} (barcode {table[BARCODE_COLUMN].iloc[row]!r}), and {bad.size} such value(s) "
                "in that column in all. Expected numbers in every coordinate column; fix or regenerate the file.",
                path=path,
            )
        numbers[column] = values

    for column in INTEGER_COLUMNS:
        fractional = np.flatnonzero(numbers[column] != np.round(numbers[column]))
        if fractional.size:
            row = int(fractional[0])
            raise VisiumReadError(
                f"{path} has a non-integer {column} value {numbers[column][row]} for barcode "
                f"{table[BARCODE_COLUMN].iloc[row]!r}. Expected integers in {', '.join(INTEGER_COLUMNS)}.",
                path=path,
            )
    invalid_in_tissue = sorted(int(value) for value in set(np.unique(numbers["in_tissue"])) - {0.0, 1.0})
    if invalid_in_tissue:
        raise VisiumReadError(
            f"{path} has in_tissue values {invalid_in_tissue[:5]}; expected only 0 or 1.",
            path=path,
        )

    barcodes = table[BARCODE_COLUMN]
    duplicated = barcodes[barcodes.duplicated()].unique()
    if duplicated.size:
        raise VisiumReadError(
            f"{path} lists {duplicated.size} barcode(s) more than once, for example {list(duplicated[:3])}. "
            "Expected each spot once.",
            path=path,
        )

    positions = pd.DataFrame(index=pd.Index(barcodes.to_numpy(), name=None))
    for column in NUMERIC_COLUMNS:
        dtype = np.int64 if column in INTEGER_COLUMNS else np.float64
        positions[column] = numbers[column].astype(dtype)
    return positions
