"""Shared test code (benches, ring pairs, process helpers, the CI policy hook); no tests here."""
