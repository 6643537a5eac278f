"""Offline evaluation: full-ranking metrics, baselines, the report and the publish gate."""
