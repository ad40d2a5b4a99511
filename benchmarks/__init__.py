"""Performance benchmarks of the course's optimizers; results are written to results/*.json."""
