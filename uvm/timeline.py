"""The JSON-lines timeline of `uvm run --json` and the `--summary-json` summary: their
pydantic models (the source of their JSON Schemas, uvm/schemas/) and the conversion of a
stats snapshot into a line.

A timeline is one JSON object per line: first the run record (`"type": "header"`,
uvm.record.Header), then one `"type": "sample"` line per sample, then, if the run ended
normally or by Ctrl-C, an `"type": "end"` line with its duration. Conventions, so that no
reader has to guess: one clock, `t_s`, seconds since the run started on a monotonic clock;
a field ending in `_pages` counts pages of `page_size_bytes` (the header's), `_bytes`
bytes, `_s` seconds, `_per_s` a rate per second; a plain integer is a count of events since
the machine started (faults, swap-ins, ...). Each figure appears once. docs/record.md has the
table of every field, and which are deterministic for a given seed.

The machine's and VMs' counters keep their internal names in uvm.stats (what scripts and
the live view read); the maps below rename them for the record, and tests/test_record.py
checks that every counter the C core has is either in the record or dropped on purpose."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from uvm.record import Header, described
from uvm.stats import Snapshot, VMSample

# internal counter name -> record name; counters absent here are derived or dropped below
MACHINE_FIELDS = {
    "frames_total": "frames_total_pages", "frames_used": "frames_used_pages",
    "frames_free": "frames_free_pages", "swap_capacity": "swap_capacity_bytes",
    "swap_pages": "swap_pages", "swap_bytes": "swap_compressed_bytes",
    "swap_file_bytes": "swap_file_bytes", "compression_ratio": "compression_ratio",
    "swapins": "swapins", "swapouts": "swapouts", "swapouts_zero": "swapouts_zero",
    "evict_fault_path": "evict_fault_path", "evict_background": "evict_background",
    "swap_errors": "swap_errors", "faults": "faults", "vms": "vms",
    "pmap_bytes": "pmap_bytes", "frame_table_bytes": "frame_table_bytes",
    "swap_map_bytes": "swap_map_bytes", "share_table_bytes": "share_table_bytes",
    "shared_frames": "shared_frames_pages", "sharing": "sharing_pages",
    "zero_shared": "zero_shared_pages", "saved": "saved_pages", "hints": "hints",
    "hint_hits": "hint_hits", "shared_hits": "shared_hits", "hash_collisions": "hash_collisions",
    "merge_races": "merge_races",
    "cow_breaks": "cow_breaks", "scanned": "scanned", "merge_stops": "merge_stops",
    "scan_rate": "scan_rate_pages_per_s", "state": "state", "tax_rate": "tax_rate",
    "mpn_free": "mpn_free_pages", "mpn_largest_free": "mpn_largest_free_pages",
    "mpn_holes": "mpn_holes",
}
MACHINE_DROPPED = {"uffd_user_mode": "the header's host.mode", "merge_stopped": "merge_stopped (a bool)"}
VM_FIELDS = {
    "pages": "size_pages", "resident": "resident_pages", "swapped": "swapped_pages",
    "zero": "zero_pages", "faults_missing": "faults_missing", "faults_minor": "faults_minor",
    "faults_wp": "faults_wp", "zero_fills": "zero_fills", "fault_around": "fault_around",
    "swapins": "swapins", "swapins_ahead": "swapins_ahead", "swapouts": "swapouts",
    "swapouts_zero": "swapouts_zero", "sharing": "sharing_pages", "zero_shared": "zero_shared_pages", "cow_breaks": "cow_breaks",
    "scanned": "scanned", "ballooned": "ballooned_pages", "balloon_touched": "balloon_touched",
    "watch_touched": "watch_touched", "hints": "hint_pages", "shared_saved": "shared_saved_pages",
    "balloon_target": "balloon_target_pages", "balloon_max": "balloon_max_pages",
    "shares": "shares", "min": "min_pages", "balloon_paged": "balloon_paged_pages",
    "balloon_pops": "balloon_pops",
    "balloon_errors": "balloon_errors", "balloon_error": "balloon_error",
}
VM_DROPPED = {"stopped": "`stopped`, the reason as text", "balloon_size": "ballooned_pages",
              "max": "size_pages (the paper's max is the VM's size)", "blocked": "blocked (a bool)"}
POLICY_FIELDS = {"target": "target_pages", "allocated": "allocated_pages", "active": "active",
                 "reclaim": "reclaim", "host_paged": "host_paged"}
GUEST_FIELDS = {
    "guest_free": "free_pages", "guest_cache": "cache_pages", "guest_cache_dirty": "cache_dirty_pages",
    "guest_process": "process_pages", "guest_pinned": "pinned_pages",
    "guest_memmap": "memmap_pages", "guest_swapins": "swapins",
    "guest_swapouts": "swapouts", "guest_swap_used": "swap_used_pages",
    "guest_cache_hits": "cache_hits", "guest_cache_misses": "cache_misses",
    "guest_reclaimed": "reclaimed", "guest_double_paging": "double_paging",
    "guest_disk_reads": "disk_reads", "guest_disk_writes": "disk_writes",
    "guest_disk_errors": "disk_errors",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MachineLine(_Strict):
    """The machine's counters at one sample."""
    frames_total_pages: int = described("machine memory M", True)
    frames_used_pages: int = described("frames holding a page (resident or shared)")
    frames_free_pages: int = described("free frames")
    swap_capacity_bytes: int = described("capacity of the swap file", True)
    swap_pages: int = described("pages holding a slot in the swap file")
    swap_compressed_bytes: int = described("compressed bytes those pages occupy")
    swap_file_bytes: int = described("bytes of the swap file in use (whole units)")
    compression_ratio: float = described("swap_pages * page size / swap_compressed_bytes (1.0: empty)")
    swapins: int = described("pages read back from swap")
    swapouts: int = described("pages written to swap")
    swapouts_zero: int = described("evicted pages found all-zero (no slot used)")
    evict_fault_path: int = described("evictions done by a pager to serve a fault")
    evict_background: int = described("evictions done by the background reclaim thread")
    swap_errors: int = described("swap reads or writes that failed")
    faults: int = described("faults served, all VMs and kinds")
    vms: int = described("VMs on the machine", True)
    pmap_bytes: int = described("host memory for the pmaps", True)
    frame_table_bytes: int = described("host memory for the frame table", True)
    swap_map_bytes: int = described("host memory for the swap slot map", True)
    share_table_bytes: int = described("host memory for the sharing hash table and shared frames")
    shared_frames_pages: int = described("frames holding shared content")
    sharing_pages: int = described("guest pages mapped onto a shared frame")
    zero_shared_pages: int = described("guest pages mapped onto the zero page")
    saved_pages: int = described("frames sharing saves: sharing_pages - shared_frames_pages")
    hints: int = described("hint entries in the sharing table")
    hint_hits: int = described("scanned pages that matched a hint and were merged")
    shared_hits: int = described("scanned pages that matched a shared frame")
    hash_collisions: int = described("equal hashes with different content")
    merge_races: int = described("queued merges given up: the page was written after it was hashed")
    cow_breaks: int = described("writes that broke copy-on-write")
    scanned: int = described("pages the sharing scanner looked at")
    merge_stopped: bool = described("true while merging is stopped at the mapping limit")
    merge_stops: int = described("times merging stopped at the mapping limit")
    scan_rate_pages_per_s: float = described("the sharing scanner's measured rate")
    state: str = described("reclamation state: high, soft, hard, low, or unmanaged (no policy)")
    tax_rate: float | None = described("the idle memory tax rate (null: no policy)", True)
    mpn_free_pages: int = described("MPN space free for VMs' slices")
    mpn_largest_free_pages: int = described("of that, the largest contiguous run: the biggest "
                                            "VM that fits")
    mpn_holes: int = described("free runs of MPN space below the top slice (coalesced: never "
                               "adjacent)")


class PolicyLine(_Strict):
    """What the memory policy last decided for a VM."""
    target_pages: int = described("the VM's allocation target")
    allocated_pages: int = described("machine memory it holds: resident + shared pages")
    active: float = described("its active fraction f, from idle sampling (0..1)")
    reclaim: str = described("how it gave memory last: none, balloon, paging, both, swap-full")
    host_paged: int = described("pages the policy paged out of it")


class GuestLine(_Strict):
    """The guest OS's own counters (a VM that booted uvm.guest)."""
    free_pages: int = described("the guest's free pages")
    cache_pages: int = described("pages in its page cache")
    cache_dirty_pages: int = described("dirty pages in its page cache")
    process_pages: int = described("pages of its processes")
    pinned_pages: int = described("pinned pages (the balloon's among them)")
    memmap_pages: int = described("pages of its page-frame array (sized by its configured memory)")
    swapins: int = described("pages the guest read back from its own swap")
    swapouts: int = described("pages the guest wrote to its own swap")
    swap_used_pages: int = described("pages in the guest's swap")
    cache_hits: int = described("page-cache hits")
    cache_misses: int = described("page-cache misses (disk reads)")
    reclaimed: int = described("pages the guest reclaimed")
    double_paging: int = described("guest swap-outs of pages the host had swapped (read back first)")
    disk_reads: int = described("virtual disk reads")
    disk_writes: int = described("virtual disk writes")
    disk_errors: int = described("virtual disk requests that failed (nothing was lost)")


class VMLine(_Strict):
    """One VM at one sample."""
    name: str = described("the VM's name", True)
    workload: str = described("its workloads' kinds, comma-separated", True)
    status: str = described("running, finished, no workload, stopped: <why>, error: <what>")
    stopped: str | None = described("why the host stopped the VM (null: it was not stopped)")
    ops: int = described("operations its workloads did (deterministic once a workload with a "
                         "fixed number of operations has finished)")
    ops_per_s: float = described("operations per second over about the last second")
    size_pages: int = described("its guest-physical memory (the paper's max)", True)
    resident_pages: int = described("pages backed by a frame of its own")
    swapped_pages: int = described("pages in the host's swap")
    zero_pages: int = described("pages never touched, or known to be zero")
    faults_missing: int = described("MISSING faults (first touch, swap-in)")
    faults_minor: int = described("MINOR faults (re-access of a watched page)")
    faults_wp: int = described("write-protect faults (copy-on-write, watched writes)")
    zero_fills: int = described("frames handed out zeroed")
    fault_around: int = described("of those, neighbours filled ahead of a touch")
    swapins: int = described("pages read back from the host's swap")
    swapins_ahead: int = described("of those, neighbours read ahead of a touch (swap_readahead)")
    swapouts: int = described("pages written to the host's swap")
    swapouts_zero: int = described("evicted pages found all-zero (no slot used)")
    sharing_pages: int = described("pages mapped onto a shared frame")
    zero_shared_pages: int = described("of those, pages mapped onto the zero page")
    cow_breaks: int = described("writes that broke copy-on-write")
    scanned: int = described("pages the sharing scanner looked at")
    ballooned_pages: int = described("pages in its balloon")
    balloon_touched: int = described("ballooned pages the guest touched anyway (given a zero page)")
    watch_touched: int = described("watched (sampled) pages the guest touched again")
    hint_pages: int = described("its pages named by a hint in the sharing table (unshared, "
                                "hashed, waiting for a match; esxtop's COWH)")
    shared_saved_pages: int = described("frames its sharing saves: a page on a frame with r "
                                        "sharers counts (r - 1) / r (esxtop's SHRDSVD)")
    balloon_target_pages: int = described("the balloon's target")
    balloon_max_pages: int = described("the most its balloon may hold")
    balloon_active: bool = described("true while a balloon driver runs in the guest (esxtop's "
                                      "MCTL?): without one the host must page instead")
    balloon_paged_pages: int = described("pages the host paged out because the balloon could "
                                         "not take them (no driver, driver disabled)")
    balloon_pops: int = described("times its balloon popped (the guest touched a ballooned "
                                  "page; the driver gave its pages back and inflated again)")
    balloon_errors: int = described("failed guest disk requests the balloon driver survived")
    balloon_error: str | None = described("the balloon driver's last error, or what ended it "
                                          "(null: none)")
    shares: int = described("its shares S", True)
    min_pages: int = described("its guaranteed minimum", True)
    blocked: bool = described("true while the policy blocks it (the low state)")
    policy: PolicyLine | None = described("the memory policy's view (null: no policy)")
    guest: GuestLine | None = described("its guest OS's counters (null: no guest OS)")


class SampleLine(_Strict):
    """A timeline line: the machine and every VM at one instant."""
    type: Literal["sample"] = "sample"
    t_s: float = described("seconds since the run started (monotonic clock; the only clock)")
    machine: MachineLine
    vms: list[VMLine]


class HeaderLine(Header):
    """The timeline's first line: the run record."""
    type: Literal["header"] = "header"


class EndLine(_Strict):
    """The timeline's last line: how the run ended."""
    type: Literal["end"] = "end"
    duration_s: float = described("wall-clock run time, seconds")
    partial: bool = described("true if the run was cut short (Ctrl-C)")
    samples: int = described("sample lines written")


class Summary(_Strict):
    """`uvm run --summary-json FILE`: the record and the run's final counters. Whether the
    run was cut short is the record's `partial`, once."""
    record: Header
    failed: list[str] = described("errors workloads raised (other than their VM being stopped)")
    states_seen: dict[str, int] = described("samples that found the machine in each "
                                            "reclamation state (empty without a policy)")
    final: SampleLine = described("the last sample: every counter at the end of the run")


def sample_line(t_s: float, snap: Snapshot, workloads: dict[str, str],
                status: dict[str, str]) -> SampleLine:
    """The timeline line of a snapshot taken t_s seconds into the run."""
    m = snap.machine
    machine = {new: m[old] for old, new in MACHINE_FIELDS.items()}
    machine["merge_stopped"] = bool(m["merge_stopped"])
    return SampleLine(t_s=round(t_s, 3), machine=MachineLine(**machine),
                      vms=[_vm_line(v, workloads.get(v.name, ""), status.get(v.name, ""))
                           for v in snap.vms])


def _vm_line(v: VMSample, workload: str, status: str) -> VMLine:
    st = v.stats
    fields: dict[str, Any] = {new: st[old] for old, new in VM_FIELDS.items()}
    fields["balloon_error"] = fields["balloon_error"] or None     # stats' "" is the record's null
    policy: dict[str, Any] | None = ({new: st[old] for old, new in POLICY_FIELDS.items()}
              if "target" in st else None)
    guest: dict[str, Any] | None = ({new: st[old] for old, new in GUEST_FIELDS.items()}
             if "guest_free" in st else None)
    return VMLine(name=v.name, workload=workload, status=status, stopped=v.stopped, ops=v.ops,
                  ops_per_s=round(v.ops_per_s, 1), blocked=bool(st["blocked"]),
                  balloon_active=bool(st["balloon_active"]),
                  policy=None if policy is None else PolicyLine(**policy),
                  guest=None if guest is None else GuestLine(**guest), **fields)
