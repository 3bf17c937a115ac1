"""iservice's benchmarks: ``bash bench/run.sh`` (``bench/cli.py``) and the tools beside it.

``common`` (sizes, the lab and its services, the user's driver), ``events`` (kernel
events stamped by a C child), ``cbuild`` (the C helpers in ``bench/c/``), ``report``
(rows, tables, the machine, results per CPU model), one module per measurement
(``p1_start``, ``p2_routes`` with ``floor``, ``p3_concurrency``, ``p4_undo``, ``memory``,
``neighbour``), ``readme`` (the README's "Performance" section from ``bench/results/``).
"""
