"""Moved to kecil.build.fit (fit composes compress and eval, so it sits one floor above both).

NOTE FOR THE LEAD: a temporary re-export so `kecil fit` (kecil/cli.py imports kecil.eval.fit) keeps
working until the CLI imports kecil.build.fit; delete this file then. It imports upwards (eval →
build), which the import-direction test must not allow once the CLI is wired.
"""

from kecil.build.fit import DEFAULT_TYPES, FitConfig, FitResult, Variant, fit, quality_key, quantize_command  # noqa: F401
