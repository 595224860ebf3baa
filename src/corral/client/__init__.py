"""Typed HTTP client for the Corral API."""

from corral.client.config import ClientConfig, load_config, write_config
from corral.client.http import ApiError, Client, Unreachable, UntrustedServer

__all__ = ["ApiError", "Client", "ClientConfig", "Unreachable", "UntrustedServer", "load_config",
           "write_config"]
