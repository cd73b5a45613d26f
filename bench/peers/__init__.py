"""Peer stacks for the end-to-end benchmark: what a team would write instead of this project.

Not part of the product. `bench.peers.app` is a Celery app with the same settings,
task name and payloads as the worker, whose task takes an off-the-shelf lock
(pottery's Redlock over the three lock nodes, redis-py's one-node ``Lock``, or
none) and then runs one SQLAlchemy transaction. ``PEER_LOCK`` picks the lock.
"""
