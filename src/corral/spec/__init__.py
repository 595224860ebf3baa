"""The user's application file: load YAML or JSON, validate it, and explain what is wrong.

`load_spec_file` / `load_spec_text` for the CLI and tests, `validate_spec_data` for request
bodies the API server has already decoded. Every failure is one `SpecError` listing every
`FieldError` found, each with a path, a line when known and, where obvious, a suggestion.
"""

from __future__ import annotations

from corral.spec.checks import CronFields, check_spec, normalise_spec, parse_cron
from corral.spec.errors import FieldError, SpecError
from corral.spec.loader import load_spec_file, load_spec_text, validate_spec_data

__all__ = [
    "CronFields", "FieldError", "SpecError", "check_spec", "load_spec_file", "load_spec_text",
    "normalise_spec", "parse_cron", "validate_spec_data",
]
