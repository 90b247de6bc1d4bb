"""Sizing answers: what fits on a GPU (:func:`what_fits`) and how many GPUs of each type a model
needs (:func:`size_cluster`)."""

from planner.sizing.cluster import COLUMNS as CLUSTER_COLUMNS
from planner.sizing.cluster import size_cluster
from planner.sizing.fits import COLUMNS as FITS_COLUMNS
from planner.sizing.fits import DEFAULT_PRECISIONS, what_fits

__all__ = ["CLUSTER_COLUMNS", "DEFAULT_PRECISIONS", "FITS_COLUMNS", "size_cluster", "what_fits"]
