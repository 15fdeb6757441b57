"""Masking-strategy comparisons (`tools/compare_masking.py`): cells, evaluations, report."""
