"""Broadway: a distributed autograder (API server)."""

__version__ = "0.1.0"
