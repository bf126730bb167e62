"""On-device runtime: load a manifest, chain segment engines, stop at the first confident exit.

The runtime never imports torch (docs/architecture.md, decision 1).
"""

from edge.errors import EdgeError, InputError, ManifestError, UserError

__all__ = ["EdgeError", "InputError", "ManifestError", "UserError"]
