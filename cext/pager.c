/* pager.c: the pager threads. Each reads userfaultfd events and serves them entirely in C,
 * without the GIL, so a guest thread that faults while holding the GIL is still served.
 *
 * What a fault needs is decided by the page's pmap state, not by the fault's kind: a
 * MISSING fault on a page that is already resident is a stale event (another fault filled
 * it) and needs only a wake-up; a MINOR fault on a page that is no longer in the memfd
 * (evicted meanwhile) needs a swap-in.
 *
 * A fault that cannot be served (swap full, swap I/O error, machine closing) stops the
 * faulting VM: the page is poisoned with UFFDIO_POISON, so the guest thread takes SIGBUS,
 * which guarded accessors and workloads turn into an error. Other VMs go on.
 *
 * Listening. Pagers that all poll the one userfaultfd are all woken by every fault: waking
 * a pager on another CPU costs the faulting CPU an inter-processor interrupt, and when that
 * pager reads the event first, the guest pays a cross-CPU wake-up (~100 us on a VM whose idle
 * vCPUs halt) instead of a switch to the pager on its own CPU (~11 us). So when the pagers are
 * pinned to distinct CPUs, only the pagers of CPUs that faults come from (the listeners) poll
 * the userfaultfd; the others sleep on their own eventfd. At most every LISTEN_CHECK_NS a
 * listener looks up the CPU the faulting thread last ran on (userfaultfd gives its thread id):
 * the pager pinned there starts listening if it was not, and a listener whose own CPU has
 * sent no fault for LISTEN_IDLE_NS stops (never the last one). A guest thread's faults are
 * then served on its own CPU, and two busy CPUs get a listener each. If the look-up fails,
 * every pager listens from then on, as without this scheme. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include "core.h"
#include "uffd.h"

#define MSGS_PER_READ 32
#define LISTEN_CHECK_NS 10000000ull     /* 10 ms between look-ups of a faulting thread's CPU */
#define LISTEN_IDLE_NS 200000000ull     /* a listener whose CPU sent no fault for 200 ms stops */

/* issues a uffd ioctl, retrying while the kernel says EAGAIN; returns 0 or -errno. */
static int uffd_ioctl(struct machine *m, unsigned long req, void *arg)
{
    for (int tries = 0; tries < 100; tries++) {
        if (ioctl(m->uffd, req, arg) == 0)
            return 0;
        if (errno != EAGAIN)
            return -errno;
        sched_yield();
    }
    return -EAGAIN;
}

/* wakes threads waiting on [addr, addr + len); returns 0 or -errno. */
int uffd_wake(struct machine *m, char *addr, uint64_t len)
{
    struct uffdio_range r = { .start = (uint64_t)addr, .len = len };
    return uffd_ioctl(m, UFFDIO_WAKE, &r);
}

/* makes [addr, addr + len) raise SIGBUS on access and wakes its waiters; returns 0 or -errno.
 * UFFDIO_POISON refuses any PTE, even a marker: a write-protected page takes a WP fault
 * while mapped, and dropping its mapping leaves a uffd-wp marker behind. Waking the writer
 * would only make it fault again, forever. So the mapping is dropped (MADV_DONTNEED keeps
 * the frame in the memfd: nothing is lost), then the marker (un-protecting a page that maps
 * nothing lets no write through: the next touch is a fault, which waits for the lock the
 * caller holds), and the poison lands. If it still cannot (the mapping is gone), the waiter
 * is woken to retry and see (a destroyed VM's range faults as an inaccessible reservation). */
int uffd_poison(struct machine *m, char *addr, uint64_t len)
{
    struct uffdio_poison p = { .range = { .start = (uint64_t)addr, .len = len } };
    int r = uffd_ioctl(m, UFFDIO_POISON, &p);
    if (r == -EEXIST && madvise(addr, len, MADV_DONTNEED) == 0) {
        struct uffdio_writeprotect w = { .range = p.range, .mode = 0 };
        if ((r = uffd_ioctl(m, UFFDIO_WRITEPROTECT, &w)) == 0) {
            p.updated = 0;
            r = uffd_ioctl(m, UFFDIO_POISON, &p);
        }
    }
    return r ? uffd_wake(m, addr, len) : 0;
}

/* fills n pages at addr with zeros; returns pages filled (the first may be all) or -errno. */
static int64_t uffd_zero(struct machine *m, char *addr, uint64_t n)
{
    struct uffdio_zeropage z = { .range = { .start = (uint64_t)addr, .len = n * PG } };
    int r = uffd_ioctl(m, UFFDIO_ZEROPAGE, &z);
    if (r == 0)
        return (int64_t)n;
    return z.zeropage > 0 ? z.zeropage / PG : r;
}

/* stops VM v with errno err: from now on its faults are poisoned. */
static void vm_stop(struct vm *v, int err)
{
    if (!v->stopped) {
        v->stopped = err;
        v->st.stopped = err;
    }
}

/* Fills outside the lock. A zero fill is one UFFDIO_ZEROPAGE, whose kernel work (allocate
 * and clear a page, add it to the page cache, map it) is most of a first touch's cost.
 * Done under m->lock, it serializes the faults of every guest thread: two threads on two
 * CPUs then faulted slower than one (bench/bench_scaling.py). So a fault decides under the
 * lock, reserves the frames (fill_frames, counted as used), marks the pages PTE_FILLING,
 * and issues the ioctl with the lock released; it takes the lock again to record them.
 * Only faults run meanwhile (they skip or wait for a filling page); everything else takes
 * the lock through machine_lock, which waits until no fill is in flight, so no other code
 * ever sees a filling page, and a fill never starts while such a thread waits. */

/* returns whether pmap entry e is a never-touched page with no fill in flight. */
static int fillable(pte_t e)
{
    return PTE_STATE(e) == PM_NONE && !(PTE_LEN(e) & PTE_FILLING);
}

static int filling(pte_t e)
{
    return (PTE_STATE(e) == PM_NONE || PTE_STATE(e) == PM_ZERO) && (PTE_LEN(e) & PTE_FILLING);
}

/* issues the zero fill of pages [lo, hi) of v, outside the lock when no thread waits for
 * quiet (see above); returns as uffd_zero. Caller holds m->lock, held again on return. */
static int64_t fill_zero(struct machine *m, struct vm *v, uint64_t lo, uint64_t hi)
{
    if (m->quiet_wanted)
        return uffd_zero(m, v->guest + lo * PG, hi - lo);
    for (uint64_t p = lo; p < hi; p++)
        v->pmap[p] |= PTE_FLAG(PTE_FILLING);
    m->fill_frames += hi - lo;
    m->filling++;
    pthread_mutex_unlock(&m->lock);
    int64_t n = uffd_zero(m, v->guest + lo * PG, hi - lo);
    pthread_mutex_lock(&m->lock);
    for (uint64_t p = lo; p < hi; p++)
        v->pmap[p] &= ~PTE_FLAG(PTE_FILLING);
    m->fill_frames -= hi - lo;
    m->filling--;
    pthread_cond_broadcast(&m->fill_cv);
    return n;
}

/* waits until a zero fill in flight ends (m->lock is released meanwhile). Counted in
 * fill_waiters, which machine_lock waits for: the waiting fault's VM stays alive. */
void fill_wait(struct machine *m)
{
    m->fill_waiters++;
    pthread_cond_wait(&m->fill_cv, &m->lock);
    m->fill_waiters--;
    pthread_cond_broadcast(&m->fill_cv);        /* machine_lock may be waiting for us */
}

/* serves a fault on a never-touched (or known-zero) page, filling absent neighbours in the
 * same fault-around block while free frames last; returns 0 or -errno. */
static int serve_zero(struct machine *m, struct vm *v, uint64_t ppn)
{
    if (filling(v->pmap[ppn])) {        /* another thread's fill: wait for it */
        while (filling(v->pmap[ppn]))
            fill_wait(m);
        return uffd_wake(m, v->guest + ppn * PG, PG);
    }
    int r = ensure_free(m, 1);
    if (r < 0)
        return r;
    uint64_t lo = ppn, hi = ppn + 1;
    if (m->fault_around > 1) {
        uint64_t fa = (uint64_t)m->fault_around;
        uint64_t blo = ppn - ppn % fa, bhi = blo + fa < v->npages ? blo + fa : v->npages;
        uint64_t spare = frames_free(m) - 1;
        while (lo > blo && hi - lo <= spare && fillable(v->pmap[lo - 1]))
            lo--;
        while (hi < bhi && hi - lo <= spare && fillable(v->pmap[hi]))
            hi++;
    }
    int64_t n = fill_zero(m, v, lo, hi);
    if (n < 0 && n != -EEXIST && hi - lo > 1) {
        /* the block spans two mappings (a page re-mapped by sharing or ballooning has a
         * VMA of its own): fill the faulting page alone */
        lo = ppn;
        hi = ppn + 1;
        n = fill_zero(m, v, ppn, ppn + 1);
    }
    if (n == -EEXIST)
        return uffd_wake(m, v->guest + ppn * PG, PG);
    if (n < 0)
        return (int)n;
    for (uint64_t p = lo; p < lo + (uint64_t)n; p++) {
        frame_add(m, v, p);
        v->st.zero_fills++;
        v->st.fault_around += p != ppn;
    }
    if (ppn >= lo + (uint64_t)n)     /* the ioctl stopped short of the faulting page */
        return uffd_wake(m, v->guest + ppn * PG, PG);
    return 0;
}

/* serves a touch of a ballooned page: a zero page, as for a never-touched one; the host
 * counts it (the guest broke its promise to leave the page alone). Returns 0 or -errno. */
static int serve_ballooned(struct machine *m, struct vm *v, uint64_t ppn)
{
    /* counted here, once: the page becomes never-touched, whose fill (with another thread
     * waiting for it, maybe) serve_zero handles */
    v->pmap[ppn] = PTE_MAKE(PM_NONE, 0, 0);
    v->st.ballooned--;
    v->st.balloon_touched++;
    return serve_zero(m, v, ppn);
}

/* records that ppn, swapped as e, is resident again: its slot freed, its frame counted. */
static void swapin_done(struct machine *m, struct vm *v, uint64_t ppn, pte_t e)
{
    swap_free(&m->swap, PTE_VAL(e), PTE_LEN(e));
    frame_add(m, v, ppn);
    v->st.swapped--;
    v->st.swapins++;
    m->st.swapins++;
}

/* swap read-ahead (as Linux's): after a swap-in of ppn, brings in the other swapped pages
 * of its aligned block of m->readahead pages, with one read request for them all. Only
 * into frames free beyond the reclaim thread's low water (never evicting for a guess), and
 * only pages whose slots lie within one cluster buffer of each other. Any error ends it:
 * the pages left stay swapped and fault in one by one. */
static void swap_readahead(struct machine *m, struct vm *v, uint64_t ppn)
{
    uint64_t ra = (uint64_t)m->readahead;
    uint64_t blo = ppn - ppn % ra, bhi = blo + ra < v->npages ? blo + ra : v->npages;
    uint64_t free = frames_free(m);
    uint64_t spare = free > m->low_water ? free - m->low_water : 0;
    uint64_t pages[EVICT_BATCH], ulo = UINT64_MAX, uhi = 0;
    int n = 0;
    for (uint64_t p = blo; p < bhi && (uint64_t)n < spare; p++) {
        pte_t e = v->pmap[p];
        if (p == ppn || PTE_STATE(e) != PM_SWAPPED)
            continue;
        uint64_t u0 = PTE_VAL(e), u1 = u0 + swap_units(PTE_LEN(e));
        uint64_t lo = u0 < ulo ? u0 : ulo, hi = u1 > uhi ? u1 : uhi;
        if ((hi - lo) * UVM_SWAP_UNIT > (uint64_t)EVICT_BATCH * PG)
            continue;
        ulo = lo;
        uhi = hi;
        pages[n++] = p;
    }
    if (n == 0 || swap_read_span(m, ulo, uhi - ulo, CBUF_CLUSTER(m)) < 0)
        return;
    for (int i = 0; i < n; i++) {          /* n <= spare: every page has its frame */
        pte_t e = v->pmap[pages[i]];
        const char *src = CBUF_CLUSTER(m) + (PTE_VAL(e) - ulo) * UVM_SWAP_UNIT;
        if (swap_expand(src, PTE_LEN(e), CBUF_PAGE(m)) < 0)
            return;
        struct uffdio_copy c = { .dst = (uint64_t)(v->guest + pages[i] * PG),
                                 .src = (uint64_t)CBUF_PAGE(m), .len = PG };
        if (uffd_ioctl(m, UFFDIO_COPY, &c) < 0)
            return;
        swapin_done(m, v, pages[i], e);
        v->st.swapins_ahead++;
    }
}

/* serves a fault on a page in the swap file; returns 0 or -errno (slot kept on error). */
static int serve_swapin(struct machine *m, struct vm *v, uint64_t ppn)
{
    int r = ensure_free(m, 1);
    if (r < 0)
        return r;
    pte_t e = v->pmap[ppn];
    r = swap_read(m, PTE_VAL(e), PTE_LEN(e), CBUF_PAGE(m));
    if (r < 0) {
        m->st.swap_errors++;
        return r;
    }
    struct uffdio_copy c = { .dst = (uint64_t)(v->guest + ppn * PG),
                             .src = (uint64_t)CBUF_PAGE(m), .len = PG };
    r = uffd_ioctl(m, UFFDIO_COPY, &c);
    if (r < 0)
        return r;
    swapin_done(m, v, ppn, e);
    if (m->readahead > 1)
        swap_readahead(m, v, ppn);
    return 0;
}

/* serves a fault on a resident page: map it again (MINOR), unprotect (WP), or wake. A
 * watched page (idle sampling) records that the guest touched it. */
static int serve_resident(struct machine *m, struct vm *v, uint64_t ppn, uint64_t flags)
{
    char *a = v->guest + ppn * PG;
    int r;
    pte_t e = v->pmap[ppn];
    if (PTE_LEN(e) & PTE_WATCH) {
        v->pmap[ppn] = PTE_MAKE(PM_RESIDENT, PTE_LEN(e) & ~PTE_WATCH, PTE_VAL(e));
        v->st.watch_touched++;
    }
    if (flags & UFFD_PAGEFAULT_FLAG_WP) {
        struct uffdio_writeprotect w = { .range = { (uint64_t)a, PG }, .mode = 0 };
        r = uffd_ioctl(m, UFFDIO_WRITEPROTECT, &w);
    } else if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
        struct uffdio_continue c = { .range = { (uint64_t)a, PG }, .mode = 0 };
        r = uffd_ioctl(m, UFFDIO_CONTINUE, &c);
    } else {
        r = -EEXIST;
    }
    return r == -EEXIST ? uffd_wake(m, a, PG) : r;
}

/* serves a fault on a shared page: a write breaks copy-on-write; a read maps the shared
 * frame again, still write-protected. */
static int serve_shared(struct machine *m, struct vm *v, uint64_t ppn, uint64_t flags)
{
    if (share_at_home(v, ppn))
        return share_fault_home(m, v, ppn, flags);
    if (flags & UFFD_PAGEFAULT_FLAG_WP)
        return share_cow(m, v, ppn);
    char *a = v->guest + ppn * PG;
    struct uffdio_continue c = { .range = { (uint64_t)a, PG }, .mode = UFFDIO_CONTINUE_MODE_WP };
    int r = uffd_ioctl(m, UFFDIO_CONTINUE, &c);
    return r == -EEXIST ? uffd_wake(m, a, PG) : r;
}

/* returns the VM whose guest mapping holds addr, or NULL; caller holds m->lock. */
struct vm *vm_at(struct machine *m, uint64_t addr)
{
    for (int i = 0; i < MAX_VMS; i++) {
        struct vm *v = m->vms[i];
        if (v && addr >= (uint64_t)v->guest && addr < (uint64_t)v->guest + v->npages * PG)
            return v;
    }
    return NULL;
}

/* serves a fault at page address addr of VM v, whichever path it came from (flags are
 * userfaultfd's UFFD_PAGEFAULT_FLAG_*); on failure stops v. Returns 0, or -errno when the
 * fault was not served (v is stopped). Caller holds m->lock. */
int fault_serve(struct machine *m, struct vm *v, uint64_t addr, uint64_t flags)
{
    uint64_t ppn = (addr - (uint64_t)v->guest) / PG;
    if (flags & UFFD_PAGEFAULT_FLAG_WP)
        v->st.faults_wp++;
    else if (flags & UFFD_PAGEFAULT_FLAG_MINOR)
        v->st.faults_minor++;
    else
        v->st.faults_missing++;
    int r = 0;
    if (!v->stopped) {
        switch (PTE_STATE(v->pmap[ppn])) {
        case PM_NONE:
        case PM_ZERO:
            r = serve_zero(m, v, ppn);
            break;
        case PM_BALLOONED:
            r = serve_ballooned(m, v, ppn);
            break;
        case PM_SWAPPED:
            r = serve_swapin(m, v, ppn);
            break;
        case PM_SHARED:
            r = serve_shared(m, v, ppn, flags);
            break;
        default:
            r = serve_resident(m, v, ppn, flags);
        }
        if (r == -EBUSY) {
            /* fills in flight hold every free frame (ensure_free): wait for one to end and
             * let the access fault again, served from scratch (this fault's view of the page
             * may be stale by then) */
            fill_wait(m);
            r = uffd_wake(m, (char *)addr, PG);
        }
        if (r < 0)
            vm_stop(v, -r);
    }
    return v->stopped ? -v->stopped : 0;
}

/* handles one page fault message. */
static void fault(struct machine *m, const struct uffd_msg *msg)
{
    uint64_t addr = msg->arg.pagefault.address & ~(uint64_t)(PG - 1);
    struct vm *v = vm_at(m, addr);
    m->st.faults++;
    if (!v)                     /* its VM was destroyed: the retry finds no mapping */
        uffd_wake(m, (char *)addr, PG);
    else if (fault_serve(m, v, addr, msg->arg.pagefault.flags) < 0)
        uffd_poison(m, (char *)addr, PG);
}

/* returns the CPU that thread tid of this process last ran on, or -1. */
static int thread_cpu(uint32_t tid)
{
    char path[64], buf[1024], *save = NULL;
    snprintf(path, sizeof path, "/proc/self/task/%u/stat", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');        /* the command name may hold spaces */
    if (!p)
        return -1;
    /* after the name come fields 3, 4, ...; field 39 is "processor" */
    char *f = strtok_r(p + 1, " ", &save);
    for (int field = 3; f && field < 39; field++)
        f = strtok_r(NULL, " ", &save);
    return f ? atoi(f) : -1;
}

/* when it is time to look (see Listening above): makes the pager pinned on the CPU this
 * fault came from a listener, and stops listener me if its own CPU has gone quiet. */
static void listen_follow(struct machine *m, int me, const struct uffd_msg *msg)
{
    uint64_t now = now_ns();
    if (msg->event != UFFD_EVENT_PAGEFAULT ||
        now - __atomic_load_n(&m->listen_checked, __ATOMIC_RELAXED) < LISTEN_CHECK_NS)
        return;
    __atomic_store_n(&m->listen_checked, now, __ATOMIC_RELAXED);
    int cpu = msg->arg.pagefault.feat.ptid ? thread_cpu(msg->arg.pagefault.feat.ptid) : -1;
    if (cpu < 0) {
        /* no thread id (an old kernel) or no /proc: all listen, as without this scheme */
        __atomic_store_n(&m->listeners, ~0ull, __ATOMIC_RELEASE);
        for (int j = 0; j < m->npagers; j++) {
            uint64_t one = 1;
            if (write(m->pager_ctx[j].evfd, &one, sizeof one) < 0)
                continue;
        }
        return;
    }
    for (int j = 0; j < m->npagers; j++) {
        if (m->pager_cpu[j] != cpu)
            continue;
        __atomic_store_n(&m->local_seen[j], now, __ATOMIC_RELAXED);
        uint64_t bit = 1ull << j, one = 1;
        if (!(__atomic_fetch_or(&m->listeners, bit, __ATOMIC_ACQ_REL) & bit) &&
            write(m->pager_ctx[j].evfd, &one, sizeof one) < 0)
            __atomic_store_n(&m->listeners, ~0ull, __ATOMIC_RELEASE);   /* all listen */
    }
    uint64_t old = __atomic_load_n(&m->listeners, __ATOMIC_ACQUIRE);
    while (now - __atomic_load_n(&m->local_seen[me], __ATOMIC_RELAXED) > LISTEN_IDLE_NS &&
           (old & ~(1ull << me)) &&
           !__atomic_compare_exchange_n(&m->listeners, &old, old & ~(1ull << me), 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        ;
}

/* the pager thread: reads every pending event, then serves them under the lock. */
static void *pager_main(void *arg)
{
    struct pager_ctx *pc = arg;
    struct machine *m = pc->m;
    struct uffd_msg msgs[MSGS_PER_READ];
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        uint64_t who = __atomic_load_n(&m->listeners, __ATOMIC_ACQUIRE);
        int listening = (who >> pc->i) & 1;
        struct pollfd p[3] = { { m->stopfd, POLLIN, 0 }, { pc->evfd, POLLIN, 0 },
                               { m->uffd, POLLIN, 0 } };
        if (poll(p, listening ? 3 : 2, -1) < 0)
            continue;
        if (p[0].revents)
            break;
        if (p[1].revents) {     /* the role changed: look again */
            uint64_t x;
            if (read(pc->evfd, &x, sizeof x) < 0)
                continue;
        }
        if (!listening || !p[2].revents)
            continue;
        /* with other listeners, take one event: the others serve the rest in parallel */
        size_t want = __builtin_popcountll(who) > 1 ? sizeof msgs[0] : sizeof msgs;
        ssize_t n = read(m->uffd, msgs, want);
        if (n <= 0)
            continue;           /* another pager took them (EAGAIN) */
        if (who != ~0ull)
            listen_follow(m, pc->i, &msgs[0]);
        pthread_mutex_lock(&m->lock);
        while (machine_held(m) && !m->closing) {
            struct timespec until = { (time_t)(m->hold_until / 1000000000u),
                                      (long)(m->hold_until % 1000000000u) };
            pthread_cond_timedwait(&m->hold_cv, &m->lock, &until);
        }
        for (size_t i = 0; i < (size_t)n / sizeof msgs[0]; i++)
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
                fault(m, &msgs[i]);
        reclaim_kick(m);
        pthread_mutex_unlock(&m->lock);
    }
    return NULL;
}

/* returns whether the pagers are pinned to distinct CPUs (then one listens at a time). */
static int pinned_apart(struct machine *m)
{
    for (int i = 0; i < m->npagers; i++)
        for (int j = 0; j < i; j++)
            if (m->pager_cpu[i] < 0 || m->pager_cpu[i] == m->pager_cpu[j])
                return 0;
    return m->npagers > 1 && m->pager_cpu[0] >= 0;
}

/* starts m->npagers pager threads, pinned to cpus[i] when cpus is given; returns 0 or -errno. */
int pager_start(struct machine *m, const int *cpus)
{
    for (int i = 0; i < m->npagers; i++) {
        m->pager_cpu[i] = cpus ? cpus[i] : -1;
        m->pager_ctx[i] = (struct pager_ctx){ m, i, eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) };
        if (m->pager_ctx[i].evfd < 0) {
            int r = -errno;
            while (i-- > 0)
                close(m->pager_ctx[i].evfd);
            m->npagers = 0;
            return r;
        }
    }
    m->listeners = pinned_apart(m) ? 1 : ~0ull;      /* pager 0 listens first */
    m->local_seen[0] = now_ns();
    for (int i = 0; i < m->npagers; i++) {
        int r = pthread_create(&m->pagers[i], NULL, pager_main, &m->pager_ctx[i]);
        if (r) {
            for (int j = i; j < m->npagers; j++)
                close(m->pager_ctx[j].evfd);
            m->npagers = i;
            return -r;
        }
        char name[16];
        snprintf(name, sizeof name, "uvm-pager%d", i);
        pthread_setname_np(m->pagers[i], name);
        if (cpus && cpus[i] >= 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(cpus[i], &set);
            pthread_setaffinity_np(m->pagers[i], sizeof set, &set);
        }
    }
    return 0;
}

/* stops and joins the pager threads. */
void pager_stop(struct machine *m)
{
    uint64_t one = 1;
    if (m->stopfd >= 0 && write(m->stopfd, &one, sizeof one) < 0)
        return;
    for (int i = 0; i < m->npagers; i++) {
        pthread_join(m->pagers[i], NULL);
        close(m->pager_ctx[i].evfd);
    }
    m->npagers = 0;
}
