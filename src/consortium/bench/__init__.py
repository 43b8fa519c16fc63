"""Benchmarks behind `consortium bench …`: each module has `main(argv) -> int` and prints tables.

They ship with the package, so an installed `consortium bench` works without a source checkout.
Results and how to rerun them are in `benchmarks/README.md` of the repository.
"""
