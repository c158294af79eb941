"""The exceptions uvm raises. User mistakes are ValueError (naming the argument or field);
everything that goes wrong inside the emulator is a UvmError."""

from __future__ import annotations

import errno
import os


class UvmError(Exception):
    """Something went wrong in the emulator itself (not a bad argument)."""


class UserfaultfdUnavailable(UvmError):
    """This process may not use userfaultfd, or the kernel lacks a feature uvm needs."""


class MissingExtra(UvmError):
    """An optional dependency (an extra of the package) is not installed."""


class VMStopped(UvmError):
    """A guest touched memory of a VM that was stopped (a fault that could not be served,
    the VM destroyed or the machine closed)."""

    def __init__(self, vm: str, reason: str) -> None:
        super().__init__(f"VM {vm!r} is stopped: {reason}")
        self.vm = vm
        self.reason = reason


class SwapFull(UvmError):
    """An explicit eviction found no room in the swap file; nothing was lost."""


NO_MAPPING = ("this process has no memory mapping to spare (it is at vm.max_map_count, "
              "{count} mappings): unmap memory or raise the sysctl")


def map_count() -> int:
    """The process's memory mappings now (each is a line of /proc/self/maps)."""
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


def stop_reason(err: int) -> str:
    """Explains the errno with which the pager stopped a VM."""
    if err == errno.ENOSPC:
        return "the swap file is full (a page had to be swapped out and there was no room)"
    if err == errno.EIO:
        return "I/O error on the swap file"
    if err == errno.ESHUTDOWN:
        return "the machine was closed"
    if err == errno.ENOMEM:
        return "no machine frame could be freed"
    if err == errno.EMFILE:
        return ("this process has no memory mapping to spare (vm.max_map_count): a write to a "
                "shared page could not be given its own copy")
    return f"pager error: {os.strerror(err)}"


USERFAULTFD_HELP = (
    "userfaultfd is not available to this process ({why}). uvm needs one of: run as root; "
    "read-write access to /dev/userfaultfd (e.g. `sudo chmod 0666 /dev/userfaultfd`, or a "
    "group with access); or `sudo sysctl vm.unprivileged_userfaultfd=1`."
)
