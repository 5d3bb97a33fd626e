"""Tier 1: generation and log-prob scoring on GPUs (or CPU). The only tier with torch."""
