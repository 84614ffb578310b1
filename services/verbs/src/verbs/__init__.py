"""verbs service."""
