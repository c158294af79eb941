"""Ballooning (paper section 3): the host asks a guest for memory and the guest decides
what to give up.

`vm.balloon` is the host's end of a private channel to the guest's balloon driver: the host
sets `target` (pages); the driver, a thread inside the guest (the paper's vmmemctl), polls it
about once a `period`, inflates by allocating and pinning pages through the guest OS's own
allocator (so the guest's reclaim picks what to drop or page out), reports their PPNs, and
the host frees the frames behind them (vm.balloon_pages: no swap write), and keeps their
PPNs in a list in its own pinned guest pages (8 bytes each: one page per 512 ballooned
pages, part of what ballooning costs a guest). Deflating frees pages back to the guest. Inflation is rate-limited by a replaceable BalloonRate (a lab
exercise): the default, AdaptiveRate, halves the rate when the guest had to reclaim to find
the pages and doubles it while it finds them free. The balloon has a maximum
size (`max_fraction` of the VM, 0.65 by default, as in later ESX); the driver may be absent
(no OS booted, or booted without it) or disabled, and then the host pages instead, as the
paper's does: a target set on such a VM makes the host page the VM's memory down to what the
balloon would have left it, and every page reclaimed so instead of by the balloon is counted
(`balloon_paged`). `BalloonChannel.page_instead` is that one mechanism, used by the target,
by `reclaim` (whichever the VM allows) and by the memory scheduler (VMs that cannot balloon
in the soft state).

A guest that touches a ballooned page anyway (it broke its promise) is given a zero page by
the host's fault path, which counts it (`balloon_touched`); the host then pops the balloon,
as ESX does: at its next poll the driver sees the pop (the counter moved), gives every page
it held back to the guest (its state is reset), and inflates again from the target. Pops are
counted (`balloon_pops`).

The driver survives a failed guest disk request (its reclaim could not write a page out):
it counts it (`balloon_errors`), keeps the last (`balloon_error`), and tries again at the
next poll; an error it cannot survive (the VM stopped) ends it, and stays in
`balloon_error`."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from uvm.errors import SwapFull, UvmError, VMStopped
from uvm.sizes import PAGE_SIZE

if TYPE_CHECKING:
    from uvm.guest.kernel import GuestOS
    from uvm.vm import VM

DEFAULT_MAX_FRACTION = 0.65
DEFAULT_PERIOD = 1.0            # seconds between polls of the target
CHUNK = 256                     # pages allocated or freed at once
MIN_RATE = 1024                 # pages per second
MAX_RATE = 65536
PPNS_PER_PAGE = PAGE_SIZE // 8  # entries of the driver's list of its PPNs, per guest page


class BalloonRate(ABC):
    """How fast the driver inflates: how many pages to ask the guest for next, and how long
    to pause after, from how hard the guest found the last request. `rate` is the rate it
    allows now, in pages per second (shown in stats; MIN_RATE to MAX_RATE)."""

    rate: float

    @abstractmethod
    def chunk(self, remaining: int) -> int:
        """Pages to allocate next, `remaining` (>= 1) short of the target; the driver asks
        for at most `remaining`."""

    @abstractmethod
    def allocated(self, asked: int, got: int, reclaimed: int) -> float:
        """The guest gave `got` of `asked` pages, and had to reclaim `reclaimed` pages (its
        cache or swap) to find them; returns the seconds to pause before the next chunk."""


class AdaptiveRate(BalloonRate):
    """The default: chunks of CHUNK pages at `rate` pages per second; the rate halves when
    the guest had to reclaim, doubles when it did not, and drops to MIN_RATE when the guest
    could give fewer pages than asked."""

    def __init__(self) -> None:
        self.rate = float(MAX_RATE)

    def chunk(self, remaining: int) -> int:
        return min(CHUNK, remaining)

    def allocated(self, asked: int, got: int, reclaimed: int) -> float:
        if reclaimed:
            self.rate = max(MIN_RATE, self.rate / 2)
        else:
            self.rate = min(MAX_RATE, self.rate * 2)
        if got < asked:
            self.rate = MIN_RATE
        return got / self.rate


class BalloonChannel:
    """The host's side of one VM's balloon (`vm.balloon`)."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm
        self._target = 0
        self._max_fraction = DEFAULT_MAX_FRACTION
        self._ppns: list[int] = []
        self._lock = threading.Lock()
        self.driver: BalloonDriver | None = None
        self.paged = 0          # pages the host paged out because the balloon could not
        self.pops = 0           # times the balloon popped (the guest touched a ballooned page)
        self._touched = 0       # the host's balloon_touched when the driver last polled

    def __repr__(self) -> str:
        return f"<Balloon of {self.vm.name!r}: {self.size}/{self._target} pages>"

    @property
    def max_fraction(self) -> float:
        """The largest balloon, as a fraction of the VM's memory (settable)."""
        return self._max_fraction

    @max_fraction.setter
    def max_fraction(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"max_fraction: must be a number in [0, 1], got {value!r}")
        self._max_fraction = float(value)

    @property
    def max_pages(self) -> int:
        return int(self._max_fraction * self.vm.pages)

    @property
    def target(self) -> int:
        """Pages the host wants the balloon to hold (settable: 0..max_pages)."""
        return self._target

    @target.setter
    def target(self, pages: int) -> None:
        if isinstance(pages, bool) or not isinstance(pages, int):
            raise ValueError(f"target: expected a number of pages, got {pages!r}")
        if pages < 0:
            raise ValueError(f"target: must be >= 0 pages, got {pages}")
        if pages > self.max_pages:
            raise ValueError(f"target: {pages} pages is beyond the balloon's maximum of "
                             f"{self.max_pages} pages ({self._max_fraction:.0%} of VM "
                             f"{self.vm.name!r})")
        before, self._target = self._target, pages
        if not self.active and self.vm.machine.scheduler is None:
            try:
                self._page_toward(pages)
            except SwapFull as e:               # paging cannot do it either: refused
                self._target = before
                self.vm._set_target(self.vm.pages - before if before else None)
                raise SwapFull(f"target: refused: VM {self.vm.name!r} has no working balloon "
                               f"driver and the host cannot page it instead ({e})") from None

    def _page_toward(self, target: int) -> None:
        """No driver to inflate: the host pages the VM down to the memory the balloon
        would have left it (pages - target), and tells the C core that target, so that its
        own evictions take from this VM first (the guest may touch its pages back in).
        SwapFull if the swap file has no room (the pages not paged stay resident). Only
        without a memory scheduler: with one, the scheduler owns the VM's target and pages
        VMs that cannot balloon itself (through page_instead)."""
        room = self.vm.pages - target
        self.vm._set_target(room if target else None)
        st = self.vm.stats()
        self.page_instead(int(st["resident"]) + int(st["sharing"]) - room, self.vm.evict_random)

    def page_instead(self, pages: int, evict: Callable[[int], int]) -> int:
        """The host pages out up to `pages` pages of the VM with `evict` (count -> pages
        paged: vm.evict_random, or the memory scheduler's victim policy) because the
        balloon cannot take them; counts them (balloon_paged) and returns how many."""
        if pages <= 0:
            return 0
        paged = evict(pages)
        self.paged += paged
        return paged

    @property
    def size(self) -> int:
        """Pages the balloon holds now (ballooned on the host)."""
        return len(self._ppns)

    @property
    def active(self) -> bool:
        """Whether a driver runs and is enabled: if not, the host must page instead."""
        d = self.driver
        return d is not None and d.enabled and d.running

    def ppns(self) -> list[int]:
        with self._lock:
            return list(self._ppns)

    def stats(self) -> dict[str, Any]:
        """balloon_target, balloon_size, balloon_max (max_pages), balloon_active (1 while a
        driver runs), balloon_paged (pages the host paged instead), balloon_pops (times it
        popped), and the driver's balloon_errors (survived) and balloon_error (the last, or
        the one that ended it; "" if none)."""
        d = self.driver
        error = d.error or d.last_error if d is not None else None
        return {"balloon_target": self._target, "balloon_size": self.size,
                "balloon_max": self.max_pages, "balloon_active": int(self.active),
                "balloon_paged": self.paged, "balloon_pops": self.pops,
                "balloon_errors": d.errors if d is not None else 0,
                "balloon_error": "" if error is None else str(error)}

    # -- the driver's end of the channel ----------------------------------------------

    def poll(self) -> int:
        return min(self._target, self.max_pages)

    def popped(self) -> bool:
        """Whether the balloon popped since the driver last asked: the host's fault path
        gave the guest a zero page for a ballooned page (balloon_touched moved). Counted."""
        st = self.vm._core_stats()
        touched = int(st.balloon_touched)
        if st.stopped or touched == self._touched:
            return False
        self._touched = touched
        self.pops += 1
        return True

    def report(self, ppns: list[int]) -> None:
        """The driver gives these pinned pages to the host, which frees their frames."""
        self.vm.balloon_pages(ppns)
        with self._lock:
            self._ppns.extend(ppns)

    def take_back(self, n: int) -> list[int]:
        """Deflates by n pages: the host returns them (zero on next touch) to the driver.
        They leave the balloon only once the host has let them go."""
        with self._lock:
            ppns = self._ppns[len(self._ppns) - n:] if n else []
        self.vm.unballoon_pages(ppns)
        with self._lock:
            del self._ppns[len(self._ppns) - len(ppns):]
        return ppns

    def stop_driver(self) -> None:
        if self.driver is not None:
            self.driver.stop()


class BalloonDriver:
    """The guest's balloon driver (vmmemctl): a thread that polls the channel every
    `period` seconds and moves the balloon toward the target, inflating as fast as its
    BalloonRate allows (default AdaptiveRate: between MIN_RATE and MAX_RATE pages/s)."""

    def __init__(self, os: GuestOS, channel: BalloonChannel, period: float = DEFAULT_PERIOD,
                 enabled: bool = True, pace: BalloonRate | None = None) -> None:
        self.os = os
        self.channel = channel
        self.period = check_period(period)
        self.enabled = enabled
        self.pace = pace if pace is not None else AdaptiveRate()
        self.hard = 0           # chunks for which the guest had to reclaim
        self.stuck = 0          # times the guest could give no more pages
        self.errors = 0         # failed guest disk requests it survived
        self.last_error: UvmError | None = None
        self.error: BaseException | None = None     # what ended it (the VM stopped, a bug)
        self.list_pages: list[int] = []     # its own pinned guest pages: the PPNs it holds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"uvm-balloon-{os.vm.name}",
                                        daemon=True)
        channel.driver = self
        self._thread.start()

    @property
    def rate(self) -> float:
        """The inflation rate allowed now (pages per second)."""
        return self.pace.rate

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _main(self) -> None:
        try:
            next_poll = 0.0
            target = 0
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_poll:
                    target, next_poll = self.channel.poll(), now + self.period
                    if self.channel.popped():
                        self._pop()
                pause = self._survive(target) if self.enabled else None
                self._stop.wait(max(0.0, next_poll - time.monotonic()) if pause is None else pause)
        except BaseException as e:      # kept in stats (balloon_error); the host pages instead
            if not (self.os.vm.machine.closed or isinstance(e, VMStopped) and self._stop.is_set()):
                self.error = e

    def _pop(self) -> None:
        """The balloon popped: the driver's state is reset, every page it held goes back to
        the guest (the touched one, no longer ballooned, among them); it inflates again
        from the target at its next steps."""
        self.os.release(self.channel.take_back(self.channel.size))
        self._trim()

    def _trim(self) -> None:
        """Gives back the list pages the balloon's size no longer needs."""
        keep = -(-self.channel.size // PPNS_PER_PAGE)
        if len(self.list_pages) > keep:
            self.os.release(self.list_pages[keep:])
            del self.list_pages[keep:]

    def _record(self, first: int, ppns: list[int]) -> None:
        """Writes ppns as entries first.. of its list (8 bytes each, in its list pages),
        as the real driver keeps the PPNs it gave the host in guest memory."""
        data = b"".join(p.to_bytes(8, "little") for p in ppns)
        while data:
            page, entry = divmod(first, PPNS_PER_PAGE)
            n = min(PPNS_PER_PAGE - entry, len(data) // 8)
            self.os.vm.write(self.list_pages[page] * PAGE_SIZE + entry * 8, data[:n * 8])
            data, first = data[n * 8:], first + n

    def _survive(self, target: int) -> float | None:
        """_step, surviving a failed guest disk request (the guest lost nothing: the pages
        it could not write out stay where they were): counted, and retried at the next
        poll. A stopped VM or anything else ends the driver."""
        from uvm.guest.disk import DiskError

        try:
            return self._step(target)
        except DiskError as e:
            self.errors += 1
            self.last_error = e
            return None

    def _step(self, target: int) -> float | None:
        """Moves one chunk toward target; returns how long to pause, or None to wait for the
        next poll (at target, or the guest can give no more)."""
        size = self.channel.size
        if size > target:
            self.os.release(self.channel.take_back(min(CHUNK, size - target)))
            self._trim()
            return 0.0
        if size == target:
            return None
        want = max(1, min(self.pace.chunk(target - size), target - size))
        before = self.os.reclaimed
        more = -(-(size + want) // PPNS_PER_PAGE) - len(self.list_pages)
        if more > 0:
            self.list_pages += self.os.alloc(more, pin=True)
        room = len(self.list_pages) * PPNS_PER_PAGE - size     # fewer if no list page was left
        pages = self.os.alloc(min(want, room), pin=True) if room > 0 else []
        if pages:
            try:
                self.channel.report(pages)
            except BaseException:
                self.os.release(pages)          # the guest keeps them
                self._trim()
                raise
            self._record(size, pages)
        reclaimed = self.os.reclaimed - before
        self.hard += reclaimed > 0              # the guest had to work
        pause = self.pace.allocated(want, len(pages), reclaimed)
        if len(pages) < want:                   # nothing left to give (pinned, busy)
            self.stuck += 1
            return None
        return max(0.0, pause)


def reclaim(vm: VM, pages: int) -> str:
    """The host takes `pages` more pages from vm: by growing its balloon if the driver is
    active (as far as its maximum allows), and by paging out random pages for the rest
    (the driver is absent or disabled, or the balloon is at its maximum). Returns
    'balloon', 'paging' or 'both'."""
    if pages < 0:
        raise ValueError(f"pages: must be >= 0, got {pages}")
    by_balloon = min(pages, vm.balloon.max_pages - vm.balloon.target) if vm.balloon.active else 0
    if by_balloon:
        vm.balloon.target += by_balloon
    vm.balloon.page_instead(pages - by_balloon, vm.evict_random)
    return "balloon" if by_balloon == pages else "paging" if by_balloon == 0 else "both"


def check_period(period: object) -> float:
    """Returns the driver's polling period; ValueError naming balloon_period unless > 0."""
    if isinstance(period, bool) or not isinstance(period, (int, float)) or not 0 < period < 1e9:
        raise ValueError(f"balloon_period: must be > 0 seconds (and under 1e9), got {period!r}")
    return float(period)
