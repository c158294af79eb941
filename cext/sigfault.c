/* sigfault.c: the in-thread fault path (Machine(fault_path="thread")).
 *
 * The machine's userfaultfd is opened with UFFD_FEATURE_SIGBUS: a user-mode fault on guest
 * memory then queues no event; the kernel raises SIGBUS on the faulting thread, whose
 * handler (guard.c) finds the machine that owns the address and calls fault_signal, which
 * serves the fault there, under m->lock, with the same code the pagers run (fault_serve),
 * and returns: the access is retried against the now filled page. No wake-up, no context
 * switch, no second CPU.
 *
 * The handler is async-signal-safe C: no malloc (swap-in and eviction use the machine's
 * preallocated buffers and LZ4 state, the share table is never rebuilt on this path), no
 * stdio, no Python. It takes m->lock; the thread it interrupted was touching guest memory,
 * and no code touches guest memory while holding m->lock (core.h's rule: the core reads
 * guest content through the machine view only), so the lock is never held by the thread
 * the handler runs on. m->lock is an error-checking mutex, so a breach of that rule is
 * reported (EDEADLK) and aborts with a message instead of hanging the thread forever.
 *
 * Userfaultfd tells a pager the fault's kind; a signal does not. The x86 page-fault error
 * code (in the signal's context) says whether the page was present (a write-protect fault)
 * and whether the access was a write; the pmap says whether a missing page is in the page
 * cache (a minor fault) or not. Other architectures get -ENOTSUP at machine_open.
 *
 * A fault that cannot be served (a stopped VM, or a failure that stops it now) returns
 * nonzero: the handler then ends the access as the pager path's poisoned page does, with
 * -EFAULT from a guarded accessor (VMStopped in Python) or the previous handler's verdict.
 *
 * What changes for users: the kernel queues no fault events at all, so a system call that
 * reads or writes guest memory (read(2) into a buffer in guest memory, say) fails with
 * EFAULT instead of waiting for a pager, as it already does with a user-mode-only
 * userfaultfd. There are no pager threads on this path; background reclaim stays. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include "core.h"
#include "uffd.h"

#define X86_PF_PROT 1           /* page-fault error code: the page was present */
#define X86_PF_WRITE 2          /* ... the access was a write */

/* returns whether the signal path can tell a fault's kind on this architecture. */
int fault_signal_supported(void)
{
#if defined(__x86_64__)
    return 1;
#else
    return 0;
#endif
}

/* returns userfaultfd's flags for a fault at page ppn of v from the signal's context. */
static uint64_t fault_flags(struct vm *v, uint64_t ppn, void *uctx)
{
    uint64_t err = 0;
#if defined(__x86_64__)
    err = (uint64_t)((ucontext_t *)uctx)->uc_mcontext.gregs[REG_ERR];
#endif
    uint64_t flags = err & X86_PF_WRITE ? UFFD_PAGEFAULT_FLAG_WRITE : 0;
    int state = PTE_STATE(v->pmap[ppn]);
    if (err & X86_PF_PROT)
        flags |= UFFD_PAGEFAULT_FLAG_WP;
    else if (state == PM_RESIDENT || state == PM_SHARED)
        flags |= UFFD_PAGEFAULT_FLAG_MINOR;     /* in the page cache, not mapped */
    return flags;
}

/* aborts with a message: this thread touched guest memory while holding m->lock. */
static void lock_breach(void)
{
    static const char msg[] = "uvm: fatal: guest memory touched while holding the machine "
                              "lock (the in-thread fault path would deadlock)\n";
    if (write(2, msg, sizeof msg - 1) < 0)
        abort();
    abort();
}

/* serves a user-mode fault at addr on machine m from the SIGBUS handler of the faulting
 * thread; returns 0 when the access may be retried, or -errno when it must fail (the VM
 * is stopped). Async-signal-safe; errno is preserved. */
int fault_signal(struct machine *m, uint64_t addr, void *uctx)
{
    int saved = errno, r = 0;
    addr &= ~(uint64_t)(PG - 1);
    if (pthread_mutex_lock(&m->lock) == EDEADLK)
        lock_breach();
    while (machine_held(m) && !m->closing) {
        struct timespec until = { (time_t)(m->hold_until / 1000000000u),
                                  (long)(m->hold_until % 1000000000u) };
        pthread_cond_timedwait(&m->hold_cv, &m->lock, &until);
    }
    struct vm *v = vm_at(m, addr);
    m->st.faults++;
    if (v) {                    /* else destroyed: the retry meets its reservation */
        uint64_t ppn = (addr - (uint64_t)v->guest) / PG;
        r = fault_serve(m, v, addr, fault_flags(v, ppn, uctx));
    }
    reclaim_kick(m);
    pthread_mutex_unlock(&m->lock);
    errno = saved;
    return r;
}
