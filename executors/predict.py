"""Predictions for an executed candidate (filled in once the estimators exist)."""

from __future__ import annotations

from executors.result import ExecutionResult
from planner.strategy import CompressionStrategy


def attach_predictions(result: ExecutionResult, strategy: CompressionStrategy) -> None:
    return None
