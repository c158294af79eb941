"""Toy guest programs that run inside uvm VMs (see base.py for how they run)."""

from workloads.base import Run, Workload
from workloads.fileserver import FileServer
from workloads.guestimage import GuestImage
from workloads.guest import FileCache, GuestChecked, GuestIdle, GuestWorkingSet
from workloads.image import OSImage
from workloads.memory import Fill, Verify
from workloads.patterns import PATTERNS, Idle, WorkingSet

KINDS: dict[str, type[Workload]] = {w.kind: w for w in (WorkingSet, Idle, Fill, Verify, OSImage,
                                                        GuestWorkingSet, FileCache, GuestChecked,
                                                        GuestIdle, FileServer, GuestImage)}

__all__ = ["Run", "Workload", "Fill", "Verify", "Idle", "WorkingSet", "OSImage", "PATTERNS",
           "KINDS", "GuestWorkingSet", "FileCache", "GuestChecked", "GuestIdle", "FileServer", "GuestImage"]
