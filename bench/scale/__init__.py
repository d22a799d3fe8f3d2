"""``python -m bench.scale``: the scale harness (issue 29). Idle, authenticated WebSockets by
the hundred thousand on ``kalami-gateway serve --workers W``, from client processes of their
own (``clients.py``, each socket a ``lean.py`` protocol from its own loopback source address),
held, measured from outside (``procfs.py``, ``probe.py``), closed; ``run.py`` is the order,
``report.py`` the table. See bench/README.md, "Scale"."""

__all__: list[str] = []
