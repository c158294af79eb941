"""The toy guest programs, under the name the API tour uses (`from uvm.workloads import
...`); they live in the top-level `workloads` package."""

from workloads import (FileCache, Fill, GuestChecked, GuestIdle, GuestWorkingSet, Idle, OSImage,
                       Run, Verify, Workload, WorkingSet)

__all__ = ["Fill", "Idle", "OSImage", "Run", "Verify", "Workload", "WorkingSet", "GuestWorkingSet",
           "FileCache", "GuestChecked", "GuestIdle"]
