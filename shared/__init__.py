"""The contract between tandem's tiers: run spec, Arrow schemas, run store, tasks.

Imports only the standard library, pyarrow and pydantic.
"""
