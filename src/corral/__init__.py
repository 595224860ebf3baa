"""Corral: run a multi-service application on a cluster of Linux machines from one file."""

__version__ = "0.1.0"
