/* guard.c: the SIGBUS/SIGSEGV handler behind GUARD_BEGIN. A fault outside a guarded region
 * is not ours: the handler puts back whatever handler was there before (Python's
 * faulthandler, or the default) and returns, so the access faults again and that handler
 * sees it exactly as it would have without uvm. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include "core.h"
#include "guard.h"

__thread sigjmp_buf *guard_jb;
static struct sigaction prev_bus, prev_segv;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static void guard_handler(int sig, siginfo_t *si, void *ctx)
{
    (void)si;
    (void)ctx;
    sigjmp_buf *jb = guard_jb;
    if (jb) {
        guard_jb = NULL;
        siglongjmp(*jb, sig);
    }
    sigaction(sig, sig == SIGBUS ? &prev_bus : &prev_segv, NULL);
}

/* installs guard_handler for one signal unless it is already there. */
static void install_one(int sig, struct sigaction *prev)
{
    struct sigaction cur, mine;
    sigaction(sig, NULL, &cur);
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == guard_handler)
        return;
    memset(&mine, 0, sizeof mine);
    mine.sa_sigaction = guard_handler;
    mine.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&mine.sa_mask);
    sigaction(sig, &mine, prev);
}

/* makes sure the guard handler is installed (others may have replaced it since). */
void guard_install(void)
{
    pthread_mutex_lock(&install_lock);
    install_one(SIGBUS, &prev_bus);
    install_one(SIGSEGV, &prev_segv);
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
