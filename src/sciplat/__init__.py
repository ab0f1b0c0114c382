"""sciplat: deploy a complete, self-hosted science platform."""

__version__ = "0.1.0"
