"""The two-tower recommender: text item tower, history user tower, loss, artifact."""
