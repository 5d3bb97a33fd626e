"""Tier 2: scoring on CPU. Imports only ``shared`` and light libraries, never torch."""
