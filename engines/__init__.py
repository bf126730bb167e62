"""Build time: from a torch network to segment engines (partition, export, build)."""
