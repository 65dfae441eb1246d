"""Performance harness of the sidecar; the entry points are its ``python -m`` modules.

- ``python -m bench``: the benchmark against its baselines (``__main__``, ``benchmark_*``);
- ``python -m bench.soak``: a long run with PostgreSQL outages (``soak``, ``soak_*``);
- ``python -m bench.pressure``: paced clients through a cut and a heal (``pressure``,
  ``pressure_*``);
- ``python -m bench.backlog``: what a deep journal costs reads, and its replay;
- ``python -m bench.fleet``: N sidecars on one PostgreSQL, through PgBouncer or not: backends,
  queries at idle, propagation between sidecars, an outage's recovery (``fleet``, ``fleet_*``);
- ``python -m bench.loadgen``: the load generator (``loadgen``, ``loadgen_*``, ``workload``,
  ``tally``);
- ``python -m bench.baselines``: the baseline servers (``baselines``, and ``baselines_ledger``
  for writes that leave the sidecar's rows too).

Shared by them: the servers as processes (``servers``), the data set (``dataset``), the harness's
own HTTP calls (``client``), the sidecar's status and counters (``status``, ``metrics``), outages
(``outages``), CPU accounting (``cpu``), the machine (``provenance``), the replica's memory
(``replica_memory``), the write checks' queries (``ledger``) and result files (``reporting``).

This file imports nothing: every load generator process imports the package first, and must stay
cheap to start.
"""
