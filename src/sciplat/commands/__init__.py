"""CLI commands that live in their own modules (registered in sciplat.cli)."""
"""Sub-commands of the `sciplat` CLI, one module each (registered in sciplat.cli)."""
