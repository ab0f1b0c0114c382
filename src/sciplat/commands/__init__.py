"""CLI commands that live in their own modules (registered in sciplat.cli)."""
