/* guard.c: the SIGBUS/SIGSEGV handler, for three jobs.
 *
 * 1. Guarded regions (GUARD_BEGIN): a fault there returns -EFAULT to the caller.
 *
 * 2. Transitions. Page sharing must change which memfd offset a guest page maps, and
 *    Linux can only do that by replacing the mapping (mmap MAP_FIXED), which drops its
 *    userfaultfd registration until it is registered again. A guest touching the page in
 *    that window would be served by the kernel behind the pager's back (a write landing in
 *    a shared frame). So the new mapping starts PROT_NONE and the range is published as "in
 *    transition": a guest touching it takes SIGSEGV, and the handler waits (yielding) until
 *    the transition ends, then returns so the access is retried against the finished,
 *    registered mapping.
 *
 * 3. The in-thread fault path: a SIGBUS that userfaultfd raised (UFFD_FEATURE_SIGBUS) in
 *    the guest memory of a machine opened with it is served right here (sigfault.c), and
 *    the access retried. If it cannot be served (its VM is stopped), it ends as job 1 or
 *    as below, like the SIGBUS of a poisoned page on the pager path.
 *
 * A fault that is none of these is not ours: the handler puts back whatever handler was there
 * before (Python's faulthandler, or the default) and returns, so the access faults again
 * and that handler sees it exactly as it would have without uvm. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include "core.h"
#include "guard.h"

__thread sigjmp_buf *guard_jb;
static struct sigaction prev_bus, prev_segv;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

#define TRANS_SLOTS 64
static struct {
    _Atomic uintptr_t start, end;
    _Atomic int taken;
} trans[TRANS_SLOTS];

/* returns whether addr lies in a range some machine has in transition. */
static int in_transition(uintptr_t addr)
{
    for (int i = 0; i < TRANS_SLOTS; i++)
        if (addr >= trans[i].start && addr < trans[i].end)
            return 1;
    return 0;
}

/* Guest mappings of live VMs. A SIGSEGV inside one is a transition this thread raced
 * with (it may have ended by the time the handler runs), so it is retried; a fault that
 * keeps coming back with no transition under way is real. */
#define LIVE_SLOTS 4096
#define RETRIES_BEFORE_REAL 64
static struct {
    _Atomic uintptr_t start, end;
    struct machine *_Atomic owner;  /* the machine serving its faults in-thread, or NULL */
    _Atomic int busy;               /* handlers using the slot (live_quiesce waits for 0) */
} live[LIVE_SLOTS];
static _Atomic int live_top;        /* slots at or above it were never used */
static __thread uintptr_t last_addr;
static __thread int repeats;

/* returns whether addr lies in a live VM's guest memory. */
static int in_live_guest(uintptr_t addr)
{
    int top = atomic_load(&live_top);
    for (int i = 0; i < top; i++)
        if (addr >= live[i].start && addr < live[i].end)
            return 1;
    return 0;
}

/* records a live VM's guest range, whose SIGBUS faults owner serves in-thread (NULL: its
 * pagers do); returns its slot, or -EMFILE. */
int live_add(char *start, uint64_t len, struct machine *owner)
{
    for (int i = 0; i < LIVE_SLOTS; i++) {
        uintptr_t zero = 0;
        if (atomic_load(&live[i].busy) == 0 &&
            atomic_compare_exchange_strong(&live[i].start, &zero, (uintptr_t)start)) {
            atomic_store(&live[i].owner, owner);    /* before end: see live_fault */
            atomic_store(&live[i].end, (uintptr_t)start + len);
            int top = atomic_load(&live_top);
            while (top <= i && !atomic_compare_exchange_weak(&live_top, &top, i + 1))
                ;
            return i;
        }
    }
    return -EMFILE;
}

/* forgets a live VM's guest range. */
void live_remove(int slot)
{
    atomic_store(&live[slot].end, 0);
    atomic_store(&live[slot].start, 0);
}

/* waits until no handler uses a removed slot's machine and VM any more; the caller holds
 * no m->lock (a handler in flight may be waiting for it). */
void live_quiesce(int slot)
{
    while (atomic_load(&live[slot].busy))
        sched_yield();
}

/* serves an in-thread fault at addr (see sigfault.c); returns 1 when the access may be
 * retried, 0 when the fault is not one to serve here or could not be served. A guest range
 * is never reused after its VM is gone (vm.c keeps a reservation), so a slot whose range
 * still holds addr once busy is raised belongs to addr's VM, and its owner (stored before
 * its end) is that VM's machine, alive until live_quiesce returns. */
static int live_fault(uintptr_t addr, void *ctx)
{
    int top = atomic_load(&live_top), served = 0;
    for (int i = 0; i < top; i++) {
        if (addr < atomic_load(&live[i].start) || addr >= atomic_load(&live[i].end))
            continue;
        atomic_fetch_add(&live[i].busy, 1);
        struct machine *m = atomic_load(&live[i].owner);
        if (m && addr >= atomic_load(&live[i].start) && addr < atomic_load(&live[i].end))
            served = fault_signal(m, addr, ctx) == 0;
        atomic_fetch_sub(&live[i].busy, 1);
        break;
    }
    return served;
}

static void guard_handler(int sig, siginfo_t *si, void *ctx)
{
    uintptr_t addr = (uintptr_t)si->si_addr;
    /* userfaultfd's SIGBUS is BUS_ADRERR; a poisoned page's is BUS_MCEERR_AR (never served:
     * it would only fault again), a signal sent by a process has si_code <= 0 */
    if (sig == SIGBUS && si->si_code == BUS_ADRERR && live_fault(addr, ctx))
        return;
    if (sig == SIGSEGV && (in_transition(addr) || in_live_guest(addr))) {
        int waited = 0;
        while (in_transition(addr)) {
            sched_yield();
            waited = 1;
        }
        repeats = addr == last_addr && !waited ? repeats + 1 : 0;
        last_addr = addr;
        if (repeats < RETRIES_BEFORE_REAL)
            return;             /* retry the access against the finished mapping */
        repeats = 0;
    }
    sigjmp_buf *jb = guard_jb;
    if (jb) {
        guard_jb = NULL;
        siglongjmp(*jb, sig);
    }
    sigaction(sig, sig == SIGBUS ? &prev_bus : &prev_segv, NULL);
}

/* installs guard_handler for one signal unless it is already there. */
static void install_one(int sig, struct sigaction *prev, int flags)
{
    struct sigaction cur, mine;
    sigaction(sig, NULL, &cur);
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == guard_handler)
        return;
    memset(&mine, 0, sizeof mine);
    mine.sa_sigaction = guard_handler;
    mine.sa_flags = SA_SIGINFO | flags;
    sigemptyset(&mine.sa_mask);
    sigaction(sig, &mine, prev);
}

/* makes sure the guard handler is installed (others may have replaced it since). */
void guard_install(void)
{
    pthread_mutex_lock(&install_lock);
    /* SIGSEGV on the alternate stack, if the thread has one (a stack overflow must still
     * reach faulthandler); SIGBUS on the thread's own stack, which is larger, for the
     * in-thread fault path */
    install_one(SIGBUS, &prev_bus, 0);
    install_one(SIGSEGV, &prev_segv, SA_ONSTACK);
    pthread_mutex_unlock(&install_lock);
}

/* copies n bytes out of guest memory; returns 0 or -EFAULT. */
int guest_read(const void *src, void *dst, size_t n)
{
    GUARD_BEGIN;
    memcpy(dst, src, n);
    GUARD_END;
    return 0;
}

/* copies n bytes into guest memory; returns 0 or -EFAULT. */
int guest_write(void *dst, const void *src, size_t n)
{
    GUARD_BEGIN;
    memcpy(dst, src, n);
    GUARD_END;
    return 0;
}

/* the zeroing itself; see guest_zero_pages. */
static __attribute__((noinline)) void zero_pages(char *base, const uint64_t *ppns, uint64_t n)
{
    for (uint64_t k = 0; k < n; k++)
        memset(base + ppns[k] * PG, 0, PG);
}

/* zeroes the n listed guest pages (a guest OS clearing the frames it hands out, in one
 * call: one GIL release for the lot); returns 0, or -EFAULT. */
int guest_zero_pages(void *base, const uint64_t *ppns, uint64_t n)
{
    GUARD_BEGIN;
    zero_pages(base, ppns, n);
    GUARD_END;
    return 0;
}

/* claims a transition slot for a machine; returns it, or -EMFILE. */
int trans_slot_get(void)
{
    for (int i = 0; i < TRANS_SLOTS; i++) {
        int free = 0;
        if (atomic_compare_exchange_strong(&trans[i].taken, &free, 1))
            return i;
    }
    return -EMFILE;
}

/* gives a transition slot back. */
void trans_slot_put(int slot)
{
    if (slot >= 0)
        atomic_store(&trans[slot].taken, 0);
}

/* publishes [addr, addr + len) as in transition (see the top of this file). The caller
 * has made sure the handler is installed (guard_install), once per batch of transitions. */
void trans_begin(int slot, char *addr, uint64_t len)
{
    atomic_store(&trans[slot].end, 0);
    atomic_store(&trans[slot].start, (uintptr_t)addr);
    atomic_store(&trans[slot].end, (uintptr_t)addr + len);
}

/* ends the slot's transition: threads waiting in the handler retry their access. */
void trans_end(int slot)
{
    atomic_store(&trans[slot].end, 0);
    atomic_store(&trans[slot].start, 0);
}
