"""uvm: a user-space emulator of VMware ESX Server's memory manager (Waldspurger, OSDI 2002)
on real memory and real page faults.

    import uvm
    from uvm.workloads import WorkingSet

    with uvm.Machine(memory="64MiB") as m:
        vm = m.create_vm("busy", memory="128MiB")
        vm.run(WorkingSet(size="100MiB", pattern="zipf"))
        for snap in m.watch(seconds=10, every=1.0):
            print(snap.time, {v.name: v.resident for v in snap.vms})
"""

from uvm import policy
from uvm.errors import SwapFull, UserfaultfdUnavailable, UvmError, VMStopped
from uvm.machine import Machine
from uvm.scheduler import MemoryPolicy
from uvm.sizes import PAGE_SIZE, parse_size
from uvm.stats import Snapshot, VMSample
from uvm.vm import VM

__all__ = ["Machine", "VM", "MemoryPolicy", "policy", "Snapshot", "VMSample", "UvmError", "VMStopped", "SwapFull",
           "UserfaultfdUnavailable", "PAGE_SIZE", "parse_size"]
__version__ = "0.1.0"
