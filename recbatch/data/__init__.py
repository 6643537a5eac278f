"""Data in: demo generation, ingestion, validation, splits and snapshots."""
