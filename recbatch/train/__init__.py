"""Distributed fine-tuning of the two-tower model with Ray Train + DeepSpeed."""
