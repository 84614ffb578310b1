"""enrollment service."""
