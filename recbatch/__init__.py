"""recbatch: a nightly, distributed batch recommender for large catalogs, on Ray.

Stages (each a plain function, each reading the previous stage's Parquet):
ingest -> train -> embed -> score -> evaluate/publish -> load.
"""

__version__ = "0.1.0"
