"""How far a benchmark's numbers can be trusted on a shared machine: its load, and the CPU share the hypervisor
gave to other machines (steal) while they were measured. Every benchmark prints it beside its table.

Example (a script in this folder; run as ``python benchmarks/<name>.py``, so this module imports as ``machine``)::

    watch = Machine()
    ...                     # the measurement
    print(table, watch)     # [machine: load 1.1 on 2 cores, CPU steal 0.0 %]
"""

import os

import psutil


class Machine:
    """Load and CPU steal since this object was made; ``str()`` reads them."""

    def __init__(self):
        self.cpu = psutil.cpu_times()

    def steal(self) -> float:
        """The share of CPU time stolen by the hypervisor since this object was made (0 where none is counted)."""
        now = psutil.cpu_times()
        spent = sum(now) - sum(self.cpu)
        return (getattr(now, "steal", 0.0) - getattr(self.cpu, "steal", 0.0)) / max(spent, 1e-9)

    def __str__(self) -> str:
        return f"[machine: load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, CPU steal {self.steal():.1%}]"
