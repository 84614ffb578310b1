"""ca_broker service."""
