"""Erasure: a user who asks to be forgotten disappears from every copy under the root and in Redis.

``forget.forget`` is the entry point (``recbatch forget --users FILE``); docs/operations.md
describes how a request flows.
"""
