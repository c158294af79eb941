"""The toy guest programs, under the name the API tour uses (`from uvm.workloads import
...`); they live in the top-level `workloads` package."""

from workloads import (FileCache, FileServer, Fill, GuestChecked, GuestIdle, GuestImage,
                       GuestWorkingSet, Idle, OSImage, Run, Verify, Workload, WorkingSet)

__all__ = ["Fill", "Idle", "OSImage", "Run", "Verify", "Workload", "WorkingSet", "GuestWorkingSet",
           "FileCache", "FileServer", "GuestChecked", "GuestIdle",
           "GuestImage"]
