"""Service config JSON to typed values."""
