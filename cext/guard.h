/* guard.h: run guest-memory accesses so that a SIGBUS (a poisoned page of a stopped VM)
 * or SIGSEGV (a destroyed VM) returns -EFAULT to the caller instead of killing the host.
 *
 *     GUARD_BEGIN;           // from here a fault returns -EFAULT from this function
 *     ... touch guest memory ...
 *     GUARD_END;
 *
 * Nothing that must be undone may happen between the two (no locks, no allocation). */
#ifndef UVM_GUARD_H
#define UVM_GUARD_H

#include <errno.h>
#include <setjmp.h>
#include "core.h"

extern __thread sigjmp_buf *guard_jb;

#define GUARD_BEGIN                         \
    sigjmp_buf guard_buf_;                  \
    guard_install();                        \
    if (sigsetjmp(guard_buf_, 1)) {         \
        guard_jb = NULL;                    \
        return -EFAULT;                     \
    }                                       \
    guard_jb = &guard_buf_

#define GUARD_END (guard_jb = NULL)

#endif
