"""The embedding stage: item and user vectors for a snapshot and a model version.

Entry point: ``recbatch.embed.stage.embed(cfg, snapshot, model_dir) -> EmbedResult``.
"""
