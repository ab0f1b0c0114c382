"""Sub-commands of the `sciplat` CLI, one module each (registered in sciplat.cli)."""
