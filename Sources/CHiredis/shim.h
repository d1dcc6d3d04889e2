#ifndef FUSEBOX_CHIREDIS_SHIM_H
#define FUSEBOX_CHIREDIS_SHIM_H

#include <hiredis/hiredis.h>
#include <poll.h>
#include <fcntl.h>
#include <errno.h>
#include <unistd.h>
#include <sys/socket.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

/* Fusebox builds against hiredis 0.14 (Debian) and 1.x. Everything that differs between them is
   gated on HIREDIS_MAJOR here, so the Swift code sees one interface. None of these names are public API. */

static inline int fusebox_hiredis_major(void) { return HIREDIS_MAJOR; }
static inline int fusebox_hiredis_minor(void) { return HIREDIS_MINOR; }

static inline int fusebox_context_fd(const redisContext *c) { return (int)c->fd; }
static inline int fusebox_context_err(const redisContext *c) { return c->err; }
static inline const char *fusebox_context_errstr(const redisContext *c) { return c->errstr; }

/* Reply types beyond RESP2 exist only in hiredis 1.x (RESP3); under 0.14 they are -1 and never occur. */
#if HIREDIS_MAJOR >= 1
#define FUSEBOX_REPLY_DOUBLE REDIS_REPLY_DOUBLE
#define FUSEBOX_REPLY_BOOL REDIS_REPLY_BOOL
#define FUSEBOX_REPLY_MAP REDIS_REPLY_MAP
#define FUSEBOX_REPLY_SET REDIS_REPLY_SET
#define FUSEBOX_REPLY_PUSH REDIS_REPLY_PUSH
#define FUSEBOX_REPLY_BIGNUM REDIS_REPLY_BIGNUM
#define FUSEBOX_REPLY_VERB REDIS_REPLY_VERB
#else
#define FUSEBOX_REPLY_DOUBLE (-1)
#define FUSEBOX_REPLY_BOOL (-1)
#define FUSEBOX_REPLY_MAP (-1)
#define FUSEBOX_REPLY_SET (-1)
#define FUSEBOX_REPLY_PUSH (-1)
#define FUSEBOX_REPLY_BIGNUM (-1)
#define FUSEBOX_REPLY_VERB (-1)
#endif

static inline int fusebox_reply_type_double(void) { return FUSEBOX_REPLY_DOUBLE; }
static inline int fusebox_reply_type_bool(void) { return FUSEBOX_REPLY_BOOL; }
static inline int fusebox_reply_type_map(void) { return FUSEBOX_REPLY_MAP; }
static inline int fusebox_reply_type_set(void) { return FUSEBOX_REPLY_SET; }
static inline int fusebox_reply_type_push(void) { return FUSEBOX_REPLY_PUSH; }
static inline int fusebox_reply_type_bignum(void) { return FUSEBOX_REPLY_BIGNUM; }
static inline int fusebox_reply_type_verb(void) { return FUSEBOX_REPLY_VERB; }

/* Outcome of a non-blocking connect: 0 when the socket is connected, otherwise the errno value. */
static inline int fusebox_socket_error(int fd) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
    return err;
}

static inline int fusebox_errno(void) { return errno; }

/* Names the calling thread (shown by top -H and gdb); a no-op where unsupported. */
static inline void fusebox_set_thread_name(const char *name) {
#ifdef __linux__
    prctl(PR_SET_NAME, name, 0, 0, 0);
#else
    (void)name;
#endif
}

#endif
