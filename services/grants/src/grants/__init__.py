"""grants service."""
