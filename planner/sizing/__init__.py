"""Sizing answers: what fits on a GPU (:func:`what_fits`) and how many GPUs of each type a model
needs (:func:`size_cluster`)."""

from planner._lazy import lazy_getattr

# Imported on first use (PEP 562): `fitplan fits` needs only planner.sizing.fits, not the cluster
# sizing (which imports pandas).
_LAZY = {
    "CLUSTER_COLUMNS": "planner.sizing.cluster:COLUMNS", "size_cluster": "planner.sizing.cluster",
    "FITS_COLUMNS": "planner.sizing.fits:COLUMNS", "DEFAULT_PRECISIONS": "planner.sizing.fits",
    "what_fits": "planner.sizing.fits",
}

__all__ = ["CLUSTER_COLUMNS", "DEFAULT_PRECISIONS", "FITS_COLUMNS", "size_cluster", "what_fits"]

__getattr__ = lazy_getattr("planner.sizing", _LAZY, globals())
