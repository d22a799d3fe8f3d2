"""The benchmark harness (``make bench``, ``python -m bench [--smoke]``): ``cases/`` (what is
measured), ``targets/`` (the processes measured, started and stopped by pid), ``report/``
(the rows, their thresholds, the tables and the JSON), ``run.py`` (the order of one run),
and the load clients and stand-ins beside them (``wrk.py``, ``wsload.py``, ``workers.py``,
``flood.py``, ``idle.py``, ``floor.py``, ``upload_backend.py``; ``heap.py``, run on its own).
It is run, not imported: its face is empty."""

__all__: list[str] = []
