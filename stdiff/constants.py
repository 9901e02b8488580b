"""AnnData keys and Space Ranger file names used across stdiff."""

# AnnData slots, laid out as scanpy and squidpy read them.
SPATIAL_KEY = "spatial"  # obsm["spatial"]: full-resolution pixel (x, y); uns["spatial"][library_id]
LIBRARY_ID_KEY = "library_id"  # obs column naming the library each spot belongs to
SCALEFACTORS_KEY = "scalefactors"
IMAGES_KEY = "images"
METADATA_KEY = "metadata"
GENE_IDS_KEY = "gene_ids"  # var column with the feature id (Ensembl id, or the symbol when no id exists)

# Position table columns, named as Space Ranger writes them since version 2.0.
POSITION_COLUMNS = (
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
)

# Scalefactor keys in scalefactors_json.json.
HIRES_SCALEF = "tissue_hires_scalef"
LOWRES_SCALEF = "tissue_lowres_scalef"
SPOT_DIAMETER_FULLRES = "spot_diameter_fullres"

# Space Ranger file names.
SPATIAL_DIR = "spatial"
FILTERED_H5 = "filtered_feature_bc_matrix.h5"
RAW_H5 = "raw_feature_bc_matrix.h5"
FILTERED_MTX_DIR = "filtered_feature_bc_matrix"
RAW_MTX_DIR = "raw_feature_bc_matrix"
POSITIONS_V1 = "tissue_positions_list.csv"
POSITIONS_V2 = "tissue_positions.csv"
POSITIONS_PARQUET = "tissue_positions.parquet"
SCALEFACTORS_JSON = "scalefactors_json.json"
HIRES_IMAGE = "tissue_hires_image.png"
LOWRES_IMAGE = "tissue_lowres_image.png"
CYTASSIST_IMAGE = "cytassist_image.tiff"

# Model folder layout written by training and read by the app.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
GENES_NAME = "genes.json"
VARIABLE_GENES_NAME = "variable_genes.json"  # the most variable genes, for the expression round trip

# Space Ranger sample layout used by the reader in stdiff.io.
OUTS_DIR = "outs"  # a sample folder may hold its Space Ranger output one level down, in outs/
MTX_MATRIX = "matrix.mtx"
MTX_BARCODES = "barcodes.tsv"
MTX_FEATURES = "features.tsv"  # Space Ranger 1.0 and later
MTX_GENES = "genes.tsv"  # Cell Ranger 2 layout, without the feature type column
H5_LIBRARY_IDS_ATTR = "library_ids"
GENE_EXPRESSION_FEATURE_TYPE = "Gene Expression"
FULLRES_NAME_HINT = "fullres"  # a file whose name contains this is taken as the full-resolution image
# Images that Space Ranger writes into spatial/ for quality control or alignment: none of them is the
# full-resolution H&E image that spot pixel coordinates refer to, so full-res discovery skips them.
SPATIAL_QC_IMAGES = (
    "aligned_fiducials.jpg",
    "detected_tissue_image.jpg",
    "aligned_tissue_image.jpg",
    CYTASSIST_IMAGE,
)
