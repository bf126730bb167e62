"""Command-line entry points: build-engines, train, quickstart, bench."""
