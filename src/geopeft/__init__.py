"""geopeft."""
