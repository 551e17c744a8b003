"""Interoperability matrices: cells, their execution, and reports."""
