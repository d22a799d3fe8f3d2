"""Application code: orchestration of the domain over time (tasks, cancellation, gathering).

The domain decides; this layer runs the decisions: it owns the asyncio tasks of voice turns,
the connections of this instance, and the calls to the ports.
"""
