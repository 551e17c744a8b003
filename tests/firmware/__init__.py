"""Machines found through firmware: ACPI tables and device trees, host writer against guest reader and
the reference tools."""
