/*
 * server.c - the gRPC C core server: listeners, completion queues, per-call state machines,
 * the pool that runs handler steps, graceful shutdown, and the daemon's stderr logger.
 * Every grpc_* call of the daemon's server side is in this file, so a port to a newer core
 * touches this file only.
 *
 * DESIGN
 * Threads. N completion-queue threads each loop on grpc_completion_queue_next of their own
 * queue; a call is accepted on, and bound to, one queue. They never run handler code: a
 * completion only updates the call's flags and puts the call on the run queue of a small
 * pool. Pool threads run a call's steps one at a time (a call is queued at most once, and a
 * call pushed while it runs is re-run by the same thread), so a step may block on disk or on
 * the service without stalling any completion queue. The pool also keeps the timers of
 * waiting calls (qd_call_wait): an idle pool thread sleeps until the earliest one.
 *
 * Per call. grpc_call_start_batch is not thread-safe per call, so every batch of a call is
 * started under the call's mutex. A call has at most two batches in flight: the
 * RECV_CLOSE_ON_SERVER batch posted on accept (its completion says whether the client
 * cancelled) and one "main" batch (a send, a receive or the final status), because a step
 * asks for one action and the next step runs only when that action completed. So no op type
 * is ever outstanding twice.
 *
 * Exactly-once freeing. A call context is reference counted: one reference per batch in
 * flight, one while it is queued or running in the pool, and one for the handler ("alive"),
 * dropped after the method's cleanup ran. The cleanup runs once (the cleaned flag, under the
 * call mutex) when the handler finished or the call died; then no step runs again. The last
 * unref unlinks the context from the server's list of live calls and frees it; shutdown waits
 * for that list to empty before the server and the queues are destroyed.
 *
 * Lock order: server mutex -> call mutex -> pool mutex. Nothing is unreferenced while a lock
 * is held (the free takes the server mutex).
 *
 * Shutdown. shutdown_begin sets the draining flag, calls grpc_server_shutdown_and_notify (no
 * new calls, running ones go on) and wakes every waiting handler once so it can end long
 * waits. shutdown_finish waits for the live calls and the shutdown tag up to the drain
 * deadline, then grpc_server_cancel_all_calls and waits again. free destroys the server,
 * shuts the queues down (pending request slots come back failed and are freed by the queue
 * threads), joins every thread and calls grpc_shutdown.
 *
 * TLS. The server credentials are built on a certificate-config fetcher, which the core calls
 * at every new connection: it hands over the material once after each qd_server_set_tls() and
 * says "unchanged" otherwise, so a SIGHUP swaps the certificate for new connections. The
 * material is checked with OpenSSL before it is offered, and the core itself keeps the old
 * certificate when a new one fails to load, so a bad reload cannot leave the server without
 * one.
 */
#include "server.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/status.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "config.h"
#include "fsutil.h"

/* Request slots kept posted per method and queue: a second call of the same method can be
 * accepted while the first slot is being re-armed. */
#define SLOTS_PER_METHOD 2
#define DEFAULT_CQ_THREADS 2
/* Steps block on disk (upload writes, download reads, hashing a finished file), not on the
 * CPU, so the pool is larger than the core count. */
#define DEFAULT_POOL_THREADS 8
#define MAX_THREADS 64
/* Status details are for people; a longer message is cut. */
#define DETAILS_MAX 1024

/* gRPC's own messages, one line each through the same logger. Its errors are mostly what a
 * quantd message also says (a failed bind), so they go out as warnings. */
static void grpc_log_line(gpr_log_func_args *a) {
    int level =
        a->severity == GPR_LOG_SEVERITY_ERROR ? QD_CONFIG_LOG_WARNING : QD_CONFIG_LOG_DEBUG;
    qd_server_log(level, "grpc: %s", a->message);
}

/* ---- types ----------------------------------------------------------------------------------- */

enum tag_kind { TAG_NEW, TAG_MAIN, TAG_CLOSE, TAG_SHUTDOWN };

/* What a completion-queue event's tag points at. */
struct tag {
    enum tag_kind kind;
    struct qd_call *call; /* NULL for TAG_SHUTDOWN */
};

enum action { ACT_NONE, ACT_RECV, ACT_SEND, ACT_FINISH, ACT_WAIT };

struct qd_call {
    struct qd_server *srv;
    const qd_rpc_method *method;
    size_t method_index;
    int cq_index;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;  /* the request of unary and server-streaming calls */
    grpc_byte_buffer *recv_buf; /* RECV_MESSAGE's result */
    grpc_byte_buffer *send_buf; /* SEND_MESSAGE's buffer, kept until the batch completes */
    grpc_slice details;         /* SEND_STATUS_FROM_SERVER's, kept until the call is freed */
    bool have_details;
    int close_cancelled;        /* RECV_CLOSE_ON_SERVER's result */
    struct tag t_new, t_main, t_close;

    atomic_int refs;
    pthread_mutex_t mu;
    /* guarded by mu */
    bool started;      /* START delivered */
    bool md_sent;      /* initial metadata went out with some batch */
    bool main_busy;    /* the main batch is in flight */
    bool main_done;    /* ... and completed, not yet delivered */
    bool main_ok;
    enum action main_kind;
    bool closed;       /* RECV_CLOSE_ON_SERVER completed */
    bool dead;         /* cancelled or failed: no more steps */
    bool finished;     /* the handler sent its status */
    bool cleaned;      /* the method's cleanup ran */
    bool waiting;      /* in qd_call_wait */
    bool wake_pending; /* a wake-up not yet delivered */
    bool drain_woken;  /* the one wake-up of shutdown_begin was given */
    int64_t wake_at;

    /* The action the running step asked for; touched by the pool thread running it only. */
    enum action act;
    bool act_twice;
    grpc_byte_buffer *act_buf;
    int act_status;
    char act_details[DETAILS_MAX];
    int64_t act_timeout;

    void *state; /* the handler's */

    /* guarded by the pool mutex */
    bool queued, running, rerun, in_timer;
    int64_t timer_at;
    struct qd_call *run_next;
    struct qd_call *timer_prev, *timer_next;

    /* guarded by the server mutex */
    struct qd_call *live_prev, *live_next;
};

struct pool {
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    struct qd_call *head, *tail;
    struct qd_call *timers;
    bool stop;
    pthread_t *threads;
    int n_threads;
};

struct qd_server {
    grpc_server *server;
    bool grpc_inited;
    bool started;
    grpc_completion_queue **cqs;
    pthread_t *cq_threads;
    int n_cqs;
    int n_cq_threads; /* started */
    void **reg;       /* registered method handles */
    const qd_rpc_method *methods;
    size_t n_methods;
    void *app;
    uint64_t max_message_bytes;
    char **addrs;
    size_t n_addrs;
    struct pool pool;
    bool pool_inited;

    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    struct qd_call *live;
    size_t n_live;
    bool shutdown_begun, shutdown_done, shutdown_finished;
    atomic_bool draining;
    struct tag t_shutdown;

    pthread_mutex_t tls_mu;
    bool tls_mu_inited;
    struct qd_server_tls *tls; /* guarded by tls_mu; NULL without TLS */
    struct tls_port *tls_ports; /* one per listen address (TCP ones used) */
    size_t n_tls_ports;
};

/* The fetcher's user data, one per TLS address: the core builds a security connector per
 * address and each must be handed the certificate once (it fails on "unchanged" before its
 * first one). */
struct tls_port {
    struct qd_server *srv;
    bool fresh; /* guarded by srv->tls_mu: the current material not yet handed over */
};

/* PEM files hold a few certificates; anything larger is a mistake. */
#define TLS_FILE_MAX ((size_t)1 << 20)

struct qd_server_tls {
    char *cert, *key, *client_ca; /* PEM text; client_ca NULL = no client certificates */
};

/* ---- small helpers --------------------------------------------------------------------------- */

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct timespec mono_deadline(int64_t at_ms) {
    struct timespec ts;
    ts.tv_sec = (time_t)(at_ms / 1000);
    ts.tv_nsec = (long)(at_ms % 1000) * 1000000;
    return ts;
}

static void cond_init_mono(pthread_cond_t *c) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* ---- the pool -------------------------------------------------------------------------------- */

static void call_unref(struct qd_call *c);

/* Queue c to run (pool mutex held). A running call is re-run by its thread instead. */
static void push_locked(struct pool *p, struct qd_call *c) {
    if (c->running) {
        c->rerun = true;
        return;
    }
    if (c->queued) return;
    c->queued = true;
    atomic_fetch_add(&c->refs, 1);
    c->run_next = NULL;
    if (p->tail)
        p->tail->run_next = c;
    else
        p->head = c;
    p->tail = c;
    pthread_cond_signal(&p->cond);
}

static void push(struct qd_server *srv, struct qd_call *c) {
    pthread_mutex_lock(&srv->pool.mu);
    push_locked(&srv->pool, c);
    pthread_mutex_unlock(&srv->pool.mu);
}

static void timer_remove_locked(struct pool *p, struct qd_call *c) {
    if (!c->in_timer) return;
    if (c->timer_prev)
        c->timer_prev->timer_next = c->timer_next;
    else
        p->timers = c->timer_next;
    if (c->timer_next) c->timer_next->timer_prev = c->timer_prev;
    c->timer_prev = c->timer_next = NULL;
    c->in_timer = false;
}

/* Arm c's timer. The timer holds no reference: a call leaves the list before its cleanup,
 * and until then the handler's reference keeps it alive. */
static void timer_add(struct qd_server *srv, struct qd_call *c, int64_t at) {
    struct pool *p = &srv->pool;
    pthread_mutex_lock(&p->mu);
    timer_remove_locked(p, c);
    c->timer_at = at;
    c->in_timer = true;
    c->timer_prev = NULL;
    c->timer_next = p->timers;
    if (p->timers) p->timers->timer_prev = c;
    p->timers = c;
    pthread_cond_broadcast(&p->cond); /* a sleeping thread may need to wake earlier */
    pthread_mutex_unlock(&p->mu);
}

static void timer_remove(struct qd_server *srv, struct qd_call *c) {
    pthread_mutex_lock(&srv->pool.mu);
    timer_remove_locked(&srv->pool, c);
    pthread_mutex_unlock(&srv->pool.mu);
}

static void run_call(struct qd_call *c);

static void *pool_main(void *arg) {
    struct qd_server *srv = arg;
    struct pool *p = &srv->pool;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        int64_t now = mono_ms(), next = INT64_MAX;
        for (struct qd_call *t = p->timers, *tn; t; t = tn) {
            tn = t->timer_next;
            if (t->timer_at <= now) {
                timer_remove_locked(p, t);
                push_locked(p, t);
            } else if (t->timer_at < next) {
                next = t->timer_at;
            }
        }
        if (p->head) {
            struct qd_call *c = p->head;
            p->head = c->run_next;
            if (!p->head) p->tail = NULL;
            c->queued = false;
            c->running = true;
            pthread_mutex_unlock(&p->mu);
            run_call(c);
            pthread_mutex_lock(&p->mu);
            c->running = false;
            if (c->rerun) {
                /* Pushed while it ran: queue it again, keeping this run's reference. */
                c->rerun = false;
                c->queued = true;
                c->run_next = NULL;
                if (p->tail)
                    p->tail->run_next = c;
                else
                    p->head = c;
                p->tail = c;
            } else {
                pthread_mutex_unlock(&p->mu);
                call_unref(c);
                pthread_mutex_lock(&p->mu);
            }
            continue;
        }
        if (p->stop) break;
        if (next == INT64_MAX) {
            pthread_cond_wait(&p->cond, &p->mu);
        } else {
            struct timespec ts = mono_deadline(next);
            pthread_cond_timedwait(&p->cond, &p->mu, &ts);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- call contexts --------------------------------------------------------------------------- */

static void slot_free(struct qd_call *c) {
    grpc_metadata_array_destroy(&c->md);
    if (c->payload) grpc_byte_buffer_destroy(c->payload);
    if (c->call) grpc_call_unref(c->call);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Post one request slot for method m on queue q. */
static void request_slot(struct qd_server *srv, int q, size_t m) {
    struct qd_call *c = calloc(1, sizeof *c);
    if (!c) {
        qd_server_log(QD_CONFIG_LOG_ERROR, "out of memory: cannot accept more calls of %s",
                      srv->methods[m].path);
        return;
    }
    c->srv = srv;
    c->method = &srv->methods[m];
    c->method_index = m;
    c->cq_index = q;
    c->t_new = (struct tag){TAG_NEW, c};
    c->t_main = (struct tag){TAG_MAIN, c};
    c->t_close = (struct tag){TAG_CLOSE, c};
    pthread_mutex_init(&c->mu, NULL);
    grpc_metadata_array_init(&c->md);
    bool has_payload = c->method->kind != QD_RPC_CLIENT_STREAMING;
    grpc_call_error e = grpc_server_request_registered_call(
        srv->server, srv->reg[m], &c->call, &c->deadline, &c->md,
        has_payload ? &c->payload : NULL, srv->cqs[q], srv->cqs[q], &c->t_new);
    if (e != GRPC_CALL_OK) {
        qd_server_log(QD_CONFIG_LOG_ERROR, "cannot accept calls of %s: %s", c->method->path,
                      grpc_call_error_to_string(e));
        slot_free(c);
    }
}

static void call_free(struct qd_call *c) {
    struct qd_server *srv = c->srv;
    if (c->call) grpc_call_unref(c->call);
    grpc_metadata_array_destroy(&c->md);
    if (c->payload) grpc_byte_buffer_destroy(c->payload);
    if (c->recv_buf) grpc_byte_buffer_destroy(c->recv_buf);
    if (c->send_buf) grpc_byte_buffer_destroy(c->send_buf);
    if (c->act_buf) grpc_byte_buffer_destroy(c->act_buf);
    if (c->have_details) grpc_slice_unref(c->details);
    /* Unlink last: shutdown_begin may still lock c->mu while c is on the list. */
    pthread_mutex_lock(&srv->mu);
    if (c->live_prev)
        c->live_prev->live_next = c->live_next;
    else
        srv->live = c->live_next;
    if (c->live_next) c->live_next->live_prev = c->live_prev;
    srv->n_live--;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->mu);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static void call_unref(struct qd_call *c) {
    if (atomic_fetch_sub(&c->refs, 1) == 1) call_free(c);
}

/* Read a whole byte buffer into a slice (one copy; the buffer may hold several slices). */
static bool read_buffer(grpc_byte_buffer *bb, grpc_slice *ret) {
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb)) return false;
    *ret = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    return true;
}

/* Start the batch of the action the step asked for (c->mu held). */
static void apply_action(struct qd_call *c) {
    struct qd_server *srv = c->srv;
    enum action act = c->act;
    if (act == ACT_NONE || c->act_twice) {
        qd_server_log(QD_CONFIG_LOG_ERROR, "internal error: the handler of %s %s", c->method->path,
                      act == ACT_NONE ? "took no action" : "took two actions");
        if (c->act_buf) grpc_byte_buffer_destroy(c->act_buf);
        c->act_buf = NULL;
        act = ACT_FINISH;
        c->act_status = GRPC_STATUS_INTERNAL;
        snprintf(c->act_details, sizeof c->act_details, "internal error in %s", c->method->path);
    }
    if (act == ACT_WAIT) {
        c->waiting = true;
        c->wake_at = c->act_timeout < 0 ? INT64_MAX : mono_ms() + c->act_timeout;
        if (atomic_load(&srv->draining) && !c->drain_woken) {
            c->drain_woken = true;
            c->wake_pending = true;
        }
        if (!c->wake_pending && c->wake_at != INT64_MAX) timer_add(srv, c, c->wake_at);
        return;
    }
    if (c->dead || c->closed) {
        /* Nobody to talk to: drop what the step produced; the caller runs the cleanup. */
        if (c->act_buf) grpc_byte_buffer_destroy(c->act_buf);
        c->act_buf = NULL;
        c->dead = true;
        return;
    }
    grpc_op ops[3];
    size_t n = 0;
    memset(ops, 0, sizeof ops);
    if (!c->md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n].data.send_initial_metadata.count = 0;
        n++;
    }
    if (act == ACT_RECV) {
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n].data.recv_message.recv_message = &c->recv_buf;
        n++;
    } else {
        if (c->act_buf) {
            ops[n].op = GRPC_OP_SEND_MESSAGE;
            ops[n].data.send_message.send_message = c->act_buf;
            n++;
        }
        if (act == ACT_FINISH) {
            if (c->have_details) grpc_slice_unref(c->details);
            c->details = grpc_slice_from_copied_string(c->act_details);
            c->have_details = true;
            ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
            ops[n].data.send_status_from_server.status = (grpc_status_code)c->act_status;
            ops[n].data.send_status_from_server.status_details = &c->details;
            ops[n].data.send_status_from_server.trailing_metadata_count = 0;
            n++;
        }
    }
    c->send_buf = c->act_buf;
    c->act_buf = NULL;
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->t_main, NULL);
    if (e != GRPC_CALL_OK) {
        qd_server_log(QD_CONFIG_LOG_ERROR, "%s: cannot start a batch: %s", c->method->path,
                      grpc_call_error_to_string(e));
        if (c->send_buf) grpc_byte_buffer_destroy(c->send_buf);
        c->send_buf = NULL;
        c->dead = true;
        return;
    }
    c->md_sent = true;
    c->main_busy = true;
    c->main_kind = act;
    atomic_fetch_add(&c->refs, 1);
    if (act == ACT_FINISH) c->finished = true;
}

/* Deliver whatever the call has for its handler, until it waits for something (pool
 * thread). The cleanup runs here too, exactly once. */
static void run_call(struct qd_call *c) {
    struct qd_server *srv = c->srv;
    bool drop_alive = false;
    pthread_mutex_lock(&c->mu);
    while (!c->cleaned) {
        if (c->closed && !c->finished) c->dead = true;
        if (c->dead || c->finished) {
            c->waiting = false;
            timer_remove(srv, c);
            bool cancel = !c->finished;
            pthread_mutex_unlock(&c->mu);
            if (c->method->cleanup) c->method->cleanup(c);
            pthread_mutex_lock(&c->mu);
            /* A handler that never sent its status: make sure the close comes back. */
            if (cancel) grpc_call_cancel(c->call, NULL);
            c->cleaned = true;
            drop_alive = true;
            break;
        }
        qd_call_event ev;
        grpc_byte_buffer *in = NULL;
        if (!c->started) {
            c->started = true;
            ev = QD_CALL_START;
            in = c->payload;
            c->payload = NULL;
        } else if (c->main_done) {
            c->main_done = false;
            if (!c->main_ok) {
                c->dead = true;
                continue;
            }
            if (c->main_kind == ACT_RECV) {
                in = c->recv_buf;
                c->recv_buf = NULL;
                ev = in ? QD_CALL_MESSAGE : QD_CALL_END_OF_STREAM;
            } else if (c->main_kind == ACT_SEND) {
                ev = QD_CALL_SENT;
            } else {
                continue;
            }
        } else if (c->waiting && (c->wake_pending || mono_ms() >= c->wake_at)) {
            c->waiting = false;
            c->wake_pending = false;
            timer_remove(srv, c);
            ev = QD_CALL_WAKE;
        } else {
            break;
        }
        pthread_mutex_unlock(&c->mu);

        grpc_slice s;
        bool have_s = false;
        if (in) {
            have_s = read_buffer(in, &s);
            grpc_byte_buffer_destroy(in);
        }
        c->act = ACT_NONE;
        c->act_twice = false;
        if (in && !have_s) {
            /* A buffer the core cannot read back (it never happens with identity
             * compression); the request is unusable either way. */
            qd_call_finish(c, GRPC_STATUS_INTERNAL, "cannot read the request message", NULL);
        } else {
            /* msg is NULL only when there is no message: an empty message (all fields
             * default) is a valid request of zero bytes. */
            size_t len = have_s ? GRPC_SLICE_LENGTH(s) : 0;
            const uint8_t *msg = NULL;
            if (have_s) msg = len ? GRPC_SLICE_START_PTR(s) : (const uint8_t *)"";
            c->method->step(c, ev, msg, len);
        }
        if (have_s) grpc_slice_unref(s);

        pthread_mutex_lock(&c->mu);
        apply_action(c);
    }
    pthread_mutex_unlock(&c->mu);
    if (drop_alive) call_unref(c);
}

/* ---- completion-queue threads ---------------------------------------------------------------- */

static void on_new(struct qd_call *c, bool ok) {
    struct qd_server *srv = c->srv;
    if (!ok) { /* shutdown: the slot was never a call */
        slot_free(c);
        return;
    }
    if (!atomic_load(&srv->draining)) request_slot(srv, c->cq_index, c->method_index);

    /* The handler's reference, taken before shutdown_begin can see the call. */
    atomic_store(&c->refs, 1);
    pthread_mutex_lock(&srv->mu);
    c->live_prev = NULL;
    c->live_next = srv->live;
    if (srv->live) srv->live->live_prev = c;
    srv->live = c;
    srv->n_live++;
    pthread_mutex_unlock(&srv->mu);

    pthread_mutex_lock(&c->mu);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;
    grpc_call_error e = grpc_call_start_batch(c->call, &op, 1, &c->t_close, NULL);
    if (e == GRPC_CALL_OK) {
        atomic_fetch_add(&c->refs, 1);
    } else {
        qd_server_log(QD_CONFIG_LOG_ERROR, "%s: cannot watch the call's end: %s", c->method->path,
                      grpc_call_error_to_string(e));
        c->dead = true;
    }
    pthread_mutex_unlock(&c->mu);
    push(srv, c);
}

static void on_main(struct qd_call *c, bool ok) {
    pthread_mutex_lock(&c->mu);
    c->main_busy = false;
    c->main_done = true;
    c->main_ok = ok;
    if (c->send_buf) grpc_byte_buffer_destroy(c->send_buf);
    c->send_buf = NULL;
    pthread_mutex_unlock(&c->mu);
    push(c->srv, c);
    call_unref(c);
}

static void on_close(struct qd_call *c) {
    pthread_mutex_lock(&c->mu);
    c->closed = true;
    if (c->close_cancelled) c->dead = true;
    bool need = !c->cleaned;
    pthread_mutex_unlock(&c->mu);
    if (need) push(c->srv, c);
    call_unref(c);
}

struct cq_arg {
    struct qd_server *srv;
    int index;
};

static void *cq_main(void *arg) {
    struct cq_arg a = *(struct cq_arg *)arg;
    free(arg);
    grpc_completion_queue *cq = a.srv->cqs[a.index];
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
        if (ev.type != GRPC_OP_COMPLETE) continue;
        struct tag *t = ev.tag;
        switch (t->kind) {
        case TAG_NEW:
            on_new(t->call, ev.success != 0);
            break;
        case TAG_MAIN:
            on_main(t->call, ev.success != 0);
            break;
        case TAG_CLOSE:
            on_close(t->call);
            break;
        case TAG_SHUTDOWN:
            pthread_mutex_lock(&a.srv->mu);
            a.srv->shutdown_done = true;
            pthread_cond_broadcast(&a.srv->cond);
            pthread_mutex_unlock(&a.srv->mu);
            break;
        }
    }
    return NULL;
}

/* ---- actions and accessors (called by handlers) ---------------------------------------------- */

static bool take_action(struct qd_call *c, enum action a) {
    if (c->act != ACT_NONE) {
        c->act_twice = true;
        return false;
    }
    c->act = a;
    return true;
}

void qd_call_recv(struct qd_call *c) { take_action(c, ACT_RECV); }

void qd_call_wait(struct qd_call *c, int64_t timeout_ms) {
    if (take_action(c, ACT_WAIT)) c->act_timeout = timeout_ms;
}

/* Pack msg into a byte buffer, or say why not (into details). */
static grpc_byte_buffer *pack(struct qd_call *c, const ProtobufCMessage *msg) {
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > c->srv->max_message_bytes) {
        snprintf(c->act_details, sizeof c->act_details,
                 "the response (%zu bytes) exceeds limits.max_message_bytes (%llu)", n,
                 (unsigned long long)c->srv->max_message_bytes);
        return NULL;
    }
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static void set_details(struct qd_call *c, const char *details) {
    snprintf(c->act_details, sizeof c->act_details, "%s", details ? details : "");
}

void qd_call_send(struct qd_call *c, const ProtobufCMessage *msg) {
    if (!take_action(c, ACT_SEND)) return;
    c->act_buf = pack(c, msg);
    if (!c->act_buf) {
        c->act = ACT_FINISH;
        c->act_status = GRPC_STATUS_RESOURCE_EXHAUSTED;
    }
}

void qd_call_finish(struct qd_call *c, int status, const char *details,
                    const ProtobufCMessage *msg) {
    if (!take_action(c, ACT_FINISH)) return;
    c->act_status = status;
    set_details(c, details);
    if (status == GRPC_STATUS_OK && msg) {
        c->act_buf = pack(c, msg);
        if (!c->act_buf) c->act_status = GRPC_STATUS_RESOURCE_EXHAUSTED;
    }
}

void qd_call_wake(struct qd_call *c) {
    pthread_mutex_lock(&c->mu);
    bool need = false;
    if (!c->cleaned) {
        c->wake_pending = true;
        need = c->waiting;
    }
    if (need) push(c->srv, c);
    pthread_mutex_unlock(&c->mu);
}

void *qd_call_state(struct qd_call *c) { return c->state; }
void qd_call_set_state(struct qd_call *c, void *state) { c->state = state; }
void *qd_call_app(struct qd_call *c) { return c->srv->app; }
bool qd_call_draining(struct qd_call *c) { return atomic_load(&c->srv->draining); }
const char *qd_call_path(const struct qd_call *c) { return c->method->path; }

bool qd_call_metadata(const struct qd_call *c, const char *key, char *buf, size_t cap,
                      size_t *ret_len) {
    size_t kl = strlen(key);
    for (size_t i = 0; i < c->md.count; i++) {
        const grpc_metadata *m = &c->md.metadata[i];
        if (GRPC_SLICE_LENGTH(m->key) != kl ||
            memcmp(GRPC_SLICE_START_PTR(m->key), key, kl) != 0)
            continue;
        size_t n = GRPC_SLICE_LENGTH(m->value);
        *ret_len = n;
        if (cap) {
            size_t k = n < cap ? n : cap - 1;
            memcpy(buf, GRPC_SLICE_START_PTR(m->value), k);
            buf[k] = '\0';
        }
        return true;
    }
    *ret_len = 0;
    if (cap) buf[0] = '\0';
    return false;
}

/* ---- TLS ------------------------------------------------------------------------------------- */

void qd_server_tls_free(struct qd_server_tls *tls) {
    if (!tls) return;
    free(tls->cert);
    if (tls->key) {
        /* The key is a secret: do not leave it in freed heap memory. */
        volatile char *p = tls->key;
        while (*p) *p++ = '\0';
        free(tls->key);
    }
    free(tls->client_ca);
    free(tls);
}

/* The certificates of a PEM text: how many parse (0 when none; *bad when a block fails). The
 * first is kept in *first when asked for. */
static int pem_certs(const char *pem, X509 **first) {
    BIO *bio = BIO_new_mem_buf(pem, -1);
    if (!bio) return 0;
    int n = 0;
    X509 *x;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (n == 0 && first) *first = x;
        else X509_free(x);
        n++;
    }
    ERR_clear_error(); /* the end of the text reads as an error */
    BIO_free(bio);
    return n;
}

static qd_err read_pem(const char *key, const char *path, char **out, qd_error *err) {
    size_t len;
    qd_error e = {0};
    qd_err rc = qd_read_file(path, TLS_FILE_MAX, out, &len, &e);
    if (rc != QD_OK) return qd_error_set(err, rc, "%s: %s", key, e.msg);
    if (!strstr(*out, "-----BEGIN ")) {
        free(*out);
        *out = NULL;
        return qd_error_set(err, QD_ERR_CONFIG, "%s: %s is not a PEM file", key, path);
    }
    return QD_OK;
}

qd_err qd_server_tls_load(const char *cert, const char *key, const char *client_ca,
                          struct qd_server_tls **ret, qd_error *err) {
    *ret = NULL;
    if (!cert || !key) return qd_error_set(err, QD_ERR_CONFIG, "tls: cert and key are needed");
    struct qd_server_tls *t = calloc(1, sizeof *t);
    if (!t) return qd_error_set(err, QD_ERR_NOMEM, "tls: out of memory");
    qd_err rc = read_pem("tls.cert", cert, &t->cert, err);
    if (rc == QD_OK) rc = read_pem("tls.key", key, &t->key, err);
    if (rc == QD_OK && client_ca) rc = read_pem("tls.client_ca", client_ca, &t->client_ca, err);
    X509 *leaf = NULL;
    if (rc == QD_OK && pem_certs(t->cert, &leaf) == 0)
        rc = qd_error_set(err, QD_ERR_CONFIG, "tls.cert: %s holds no certificate", cert);
    if (rc == QD_OK) {
        BIO *bio = BIO_new_mem_buf(t->key, -1);
        EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
        if (!pk)
            rc = qd_error_set(err, QD_ERR_CONFIG, "tls.key: %s holds no private key that can "
                              "be read (encrypted keys are not supported)", key);
        else if (X509_check_private_key(leaf, pk) != 1)
            rc = qd_error_set(err, QD_ERR_CONFIG, "tls.key: %s does not match the "
                              "certificate of %s", key, cert);
        EVP_PKEY_free(pk);
        BIO_free(bio);
        ERR_clear_error();
    }
    X509_free(leaf);
    if (rc == QD_OK && t->client_ca && pem_certs(t->client_ca, NULL) == 0)
        rc = qd_error_set(err, QD_ERR_CONFIG, "tls.client_ca: %s holds no certificate",
                          client_ca);
    if (rc != QD_OK) {
        qd_server_tls_free(t);
        return rc;
    }
    *ret = t;
    return QD_OK;
}

/* The core's fetcher (see DESIGN): called at every new connection, on the core's threads. */
static grpc_ssl_certificate_config_reload_status fetch_tls(
    void *user, grpc_ssl_server_certificate_config **config) {
    struct tls_port *port = user;
    struct qd_server *srv = port->srv;
    grpc_ssl_certificate_config_reload_status st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
    pthread_mutex_lock(&srv->tls_mu);
    if (port->fresh && srv->tls) {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = srv->tls->key,
                                           .cert_chain = srv->tls->cert};
        /* The core asserts on NULL roots on this path even when it requests no client
         * certificate; without a client CA the roots are never consulted, so the server's
         * own chain stands in. */
        const char *roots = srv->tls->client_ca ? srv->tls->client_ca : srv->tls->cert;
        *config = grpc_ssl_server_certificate_config_create(roots, &pair, 1);
        st = *config ? GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW
                     : GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
        port->fresh = false;
    }
    pthread_mutex_unlock(&srv->tls_mu);
    return st;
}

void qd_server_set_tls(struct qd_server *srv, struct qd_server_tls *tls) {
    if (!srv || !srv->tls_mu_inited) {
        qd_server_tls_free(tls);
        return;
    }
    pthread_mutex_lock(&srv->tls_mu);
    struct qd_server_tls *old = srv->tls;
    if (old) {
        srv->tls = tls;
        for (size_t i = 0; i < srv->n_tls_ports; i++) srv->tls_ports[i].fresh = true;
    }
    pthread_mutex_unlock(&srv->tls_mu);
    qd_server_tls_free(old ? old : tls);
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

/* The address as bound: a TCP address's port replaced by the real one. */
static char *bound_address(const char *addr, int port) {
    if (strncmp(addr, "unix:", 5) == 0) return dup_str(addr);
    const char *colon = strrchr(addr, ':');
    size_t host_len = colon ? (size_t)(colon - addr) : strlen(addr);
    char *out = malloc(host_len + 16);
    if (out) snprintf(out, host_len + 16, "%.*s:%d", (int)host_len, addr, port);
    return out;
}

size_t qd_server_address_count(const struct qd_server *srv) { return srv->n_addrs; }

const char *qd_server_address(const struct qd_server *srv, size_t i) {
    return i < srv->n_addrs ? srv->addrs[i] : NULL;
}

static void wake_all(struct qd_server *srv) {
    pthread_mutex_lock(&srv->mu);
    for (struct qd_call *c = srv->live; c; c = c->live_next) {
        pthread_mutex_lock(&c->mu);
        if (!c->cleaned && !c->drain_woken) {
            c->drain_woken = true;
            c->wake_pending = true;
            if (c->waiting) push(srv, c);
        }
        pthread_mutex_unlock(&c->mu);
    }
    pthread_mutex_unlock(&srv->mu);
}

void qd_server_shutdown_begin(struct qd_server *srv) {
    pthread_mutex_lock(&srv->mu);
    bool first = !srv->shutdown_begun;
    srv->shutdown_begun = true;
    pthread_mutex_unlock(&srv->mu);
    if (!first) return;
    atomic_store(&srv->draining, true);
    srv->t_shutdown = (struct tag){TAG_SHUTDOWN, NULL};
    grpc_server_shutdown_and_notify(srv->server, srv->cqs[0], &srv->t_shutdown);
    wake_all(srv);
}

static bool all_done_locked(const struct qd_server *srv) {
    return srv->n_live == 0 && srv->shutdown_done;
}

void qd_server_shutdown_finish(struct qd_server *srv, int64_t deadline_ms) {
    qd_server_shutdown_begin(srv);
    pthread_mutex_lock(&srv->mu);
    while (!all_done_locked(srv) && mono_ms() < deadline_ms) {
        struct timespec ts = mono_deadline(deadline_ms);
        pthread_cond_timedwait(&srv->cond, &srv->mu, &ts);
    }
    if (!all_done_locked(srv)) {
        size_t n = srv->n_live;
        pthread_mutex_unlock(&srv->mu);
        qd_server_log(QD_CONFIG_LOG_NOTICE, "drain deadline passed: cancelling %zu call%s", n,
                      n == 1 ? "" : "s");
        grpc_server_cancel_all_calls(srv->server);
        pthread_mutex_lock(&srv->mu);
        while (!all_done_locked(srv)) pthread_cond_wait(&srv->cond, &srv->mu);
    }
    srv->shutdown_finished = true;
    pthread_mutex_unlock(&srv->mu);
}

void qd_server_free(struct qd_server *srv) {
    if (!srv) return;
    if (srv->server) {
        if (srv->n_cq_threads > 0) {
            if (!srv->shutdown_finished) qd_server_shutdown_finish(srv, mono_ms());
        } else if (srv->n_cqs > 0 && srv->cqs[0]) {
            /* Start failed before the queue threads ran: take the shutdown tag here. */
            srv->t_shutdown = (struct tag){TAG_SHUTDOWN, NULL};
            grpc_server_shutdown_and_notify(srv->server, srv->cqs[0], &srv->t_shutdown);
            grpc_server_cancel_all_calls(srv->server);
            for (;;) {
                grpc_event ev = grpc_completion_queue_next(
                    srv->cqs[0], gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
                if (ev.type == GRPC_OP_COMPLETE && ev.tag == &srv->t_shutdown) break;
                if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
            }
        }
        grpc_server_destroy(srv->server);
    }
    for (int i = 0; i < srv->n_cqs; i++)
        if (srv->cqs[i]) grpc_completion_queue_shutdown(srv->cqs[i]);
    for (int i = 0; i < srv->n_cq_threads; i++) pthread_join(srv->cq_threads[i], NULL);
    for (int i = srv->n_cq_threads; i < srv->n_cqs; i++) {
        /* Queues without a thread (a failed start) are drained here. */
        if (!srv->cqs[i]) continue;
        for (;;) {
            grpc_event ev =
                grpc_completion_queue_next(srv->cqs[i], gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
            if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
            if (ev.type == GRPC_OP_COMPLETE && ev.tag != &srv->t_shutdown) {
                struct tag *t = ev.tag;
                if (t->kind == TAG_NEW) slot_free(t->call);
            }
        }
    }
    for (int i = 0; i < srv->n_cqs; i++)
        if (srv->cqs[i]) grpc_completion_queue_destroy(srv->cqs[i]);
    if (srv->pool_inited) {
        pthread_mutex_lock(&srv->pool.mu);
        srv->pool.stop = true;
        pthread_cond_broadcast(&srv->pool.cond);
        pthread_mutex_unlock(&srv->pool.mu);
        for (int i = 0; i < srv->pool.n_threads; i++) pthread_join(srv->pool.threads[i], NULL);
        pthread_mutex_destroy(&srv->pool.mu);
        pthread_cond_destroy(&srv->pool.cond);
    }
    free(srv->pool.threads);
    free(srv->cqs);
    free(srv->cq_threads);
    free(srv->reg);
    for (size_t i = 0; i < srv->n_addrs; i++) free(srv->addrs[i]);
    free(srv->addrs);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->cond);
    if (srv->grpc_inited) grpc_shutdown();
    if (srv->tls_mu_inited) pthread_mutex_destroy(&srv->tls_mu);
    qd_server_tls_free(srv->tls);
    free(srv->tls_ports);
    free(srv);
}

static int clamp_threads(int n, int def) {
    if (n <= 0) return def;
    return n > MAX_THREADS ? MAX_THREADS : n;
}

/* The options qd_server_start() refuses before it builds anything. */
static qd_err check_options(const qd_server_options *opt, qd_error *err) {
    if (opt->n_listen == 0) return qd_error_set(err, QD_ERR_CONFIG, "listen: no address");
    if (opt->n_methods == 0) return qd_error_set(err, QD_ERR_INTERNAL, "no methods to serve");
    if (opt->max_message_bytes == 0 || opt->max_message_bytes > INT_MAX)
        return qd_error_set(err, QD_ERR_CONFIG, "limits.max_message_bytes: %llu out of range",
                            (unsigned long long)opt->max_message_bytes);
    if (opt->max_concurrent_streams < 1 || opt->max_concurrent_streams > INT_MAX)
        return qd_error_set(err, QD_ERR_CONFIG,
                            "limits.max_concurrent_streams: %lld out of range",
                            (long long)opt->max_concurrent_streams);
    return QD_OK;
}

qd_err qd_server_start(const qd_server_options *opt, struct qd_server **ret, qd_error *err) {
    *ret = NULL;
    struct qd_server_tls *tls = opt->tls; /* ours from here on, whatever happens */
    qd_err rc = check_options(opt, err);
    if (rc != QD_OK) {
        qd_server_tls_free(tls);
        return rc;
    }
    struct qd_server *srv = calloc(1, sizeof *srv);
    if (!srv) {
        qd_server_tls_free(tls);
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory starting the server");
    }
    pthread_mutex_init(&srv->tls_mu, NULL);
    srv->tls_mu_inited = true;
    srv->tls = tls;
    pthread_mutex_init(&srv->mu, NULL);
    cond_init_mono(&srv->cond);
    atomic_init(&srv->draining, false);
    srv->methods = opt->methods;
    srv->n_methods = opt->n_methods;
    srv->app = opt->app;
    srv->max_message_bytes = opt->max_message_bytes;
    srv->n_cqs = clamp_threads(opt->n_cq_threads, DEFAULT_CQ_THREADS);
    int n_pool = clamp_threads(opt->n_pool_threads, DEFAULT_POOL_THREADS);
    rc = QD_OK;

    srv->cqs = calloc((size_t)srv->n_cqs, sizeof *srv->cqs);
    srv->cq_threads = calloc((size_t)srv->n_cqs, sizeof *srv->cq_threads);
    srv->reg = calloc(opt->n_methods, sizeof *srv->reg);
    srv->addrs = calloc(opt->n_listen, sizeof *srv->addrs);
    srv->pool.threads = calloc((size_t)n_pool, sizeof *srv->pool.threads);
    srv->tls_ports = calloc(opt->n_listen, sizeof *srv->tls_ports);
    srv->n_tls_ports = opt->n_listen;
    if (!srv->cqs || !srv->cq_threads || !srv->reg || !srv->addrs || !srv->pool.threads ||
        !srv->tls_ports) {
        srv->n_cqs = 0;
        qd_server_free(srv);
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory starting the server");
    }

    gpr_set_log_function(grpc_log_line);
    grpc_init();
    srv->grpc_inited = true;

    /* The quota bounds the core's buffers across all connections; without BDP probing the
     * HTTP/2 windows stay at their defaults instead of growing per stream. */
    grpc_resource_quota *quota = grpc_resource_quota_create("quantd");
    grpc_resource_quota_resize(quota, (size_t)opt->memory_quota);
    grpc_arg args[6];
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = (int)opt->max_message_bytes;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = (int)opt->max_message_bytes;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = GRPC_ARG_MAX_CONCURRENT_STREAMS;
    args[2].value.integer = (int)opt->max_concurrent_streams;
    args[3].type = GRPC_ARG_INTEGER;
    args[3].key = GRPC_ARG_HTTP2_BDP_PROBE;
    args[3].value.integer = 0;
    /* Without this a second daemon could bind the same port and share its traffic. */
    args[4].type = GRPC_ARG_INTEGER;
    args[4].key = GRPC_ARG_ALLOW_REUSEPORT;
    args[4].value.integer = 0;
    args[5].type = GRPC_ARG_POINTER;
    args[5].key = GRPC_ARG_RESOURCE_QUOTA;
    args[5].value.pointer.p = quota;
    args[5].value.pointer.vtable = grpc_resource_quota_arg_vtable();
    grpc_channel_args chargs = {.num_args = 6, .args = args};
    srv->server = grpc_server_create(&chargs, NULL);
    grpc_resource_quota_unref(quota);
    if (!srv->server) {
        qd_server_free(srv);
        return qd_error_set(err, QD_ERR_INTERNAL, "grpc_server_create failed");
    }

    for (size_t m = 0; m < opt->n_methods; m++) {
        const qd_rpc_method *me = &opt->methods[m];
        srv->reg[m] = grpc_server_register_method(
            srv->server, me->path, NULL,
            me->kind == QD_RPC_CLIENT_STREAMING ? GRPC_SRM_PAYLOAD_NONE
                                                : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
            0);
        if (!srv->reg[m]) {
            rc = qd_error_set(err, QD_ERR_INTERNAL, "cannot register method %s", me->path);
            break;
        }
    }
    for (int i = 0; rc == QD_OK && i < srv->n_cqs; i++) {
        srv->cqs[i] = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(srv->server, srv->cqs[i], NULL);
    }
    if (rc == QD_OK) {
        grpc_server_credentials *plain = grpc_insecure_server_credentials_create();
        grpc_ssl_client_certificate_request_type req =
            srv->tls && srv->tls->client_ca
                ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
        for (size_t i = 0; rc == QD_OK && i < opt->n_listen; i++) {
            const char *addr = opt->listen[i];
            grpc_server_credentials *creds = plain, *secure = NULL;
            if (srv->tls && strncmp(addr, "unix:", 5) != 0) {
                struct tls_port *tp = &srv->tls_ports[i];
                pthread_mutex_lock(&srv->tls_mu);
                tp->srv = srv;
                tp->fresh = true;
                pthread_mutex_unlock(&srv->tls_mu);
                grpc_ssl_server_credentials_options *o =
                    grpc_ssl_server_credentials_create_options_using_config_fetcher(
                        req, fetch_tls, tp);
                secure = o ? grpc_ssl_server_credentials_create_with_options(o) : NULL;
                if (!secure) {
                    rc = qd_error_set(err, QD_ERR_CONFIG, "listen: %s: the gRPC core refused "
                                      "the TLS certificate, key or client CA", addr);
                    break;
                }
                creds = secure;
            }
            int port = grpc_server_add_http2_port(srv->server, addr, creds);
            if (secure) grpc_server_credentials_release(secure);
            if (port <= 0) {
                rc = qd_error_set(err, QD_ERR_UNAVAILABLE,
                                  "listen: cannot listen on %s (address in use, not local, "
                                  "or not an address)",
                                  addr);
                break;
            }
            srv->addrs[i] = bound_address(addr, port);
            if (!srv->addrs[i]) {
                rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
                break;
            }
            srv->n_addrs = i + 1;
        }
        grpc_server_credentials_release(plain);
    }
    if (rc != QD_OK) {
        qd_server_free(srv);
        return rc;
    }

    grpc_server_start(srv->server);
    srv->started = true;
    for (size_t i = 0; i < srv->n_addrs; i++) {
        /* The socket gets the umask's mode; group members (quantctl users) may connect. */
        if (strncmp(srv->addrs[i], "unix:", 5) == 0 && chmod(srv->addrs[i] + 5, 0660) != 0) {
            rc = qd_error_set(err, QD_ERR_IO, "listen: chmod 0660 %s: %s", srv->addrs[i] + 5,
                              strerror(errno));
            break;
        }
    }

    pthread_mutex_init(&srv->pool.mu, NULL);
    cond_init_mono(&srv->pool.cond);
    srv->pool_inited = true;
    for (int i = 0; rc == QD_OK && i < n_pool; i++) {
        if (pthread_create(&srv->pool.threads[i], NULL, pool_main, srv) != 0) {
            rc = qd_error_set(err, QD_ERR_INTERNAL, "cannot start a server thread");
            break;
        }
        srv->pool.n_threads = i + 1;
    }
    for (int i = 0; rc == QD_OK && i < srv->n_cqs; i++) {
        struct cq_arg *a = malloc(sizeof *a);
        if (!a) {
            rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
            break;
        }
        *a = (struct cq_arg){srv, i};
        if (pthread_create(&srv->cq_threads[i], NULL, cq_main, a) != 0) {
            free(a);
            rc = qd_error_set(err, QD_ERR_INTERNAL, "cannot start a server thread");
            break;
        }
        srv->n_cq_threads = i + 1;
    }
    if (rc != QD_OK) {
        qd_server_free(srv);
        return rc;
    }
    for (int q = 0; q < srv->n_cqs; q++)
        for (size_t m = 0; m < srv->n_methods; m++)
            for (int k = 0; k < SLOTS_PER_METHOD; k++) request_slot(srv, q, m);
    *ret = srv;
    return QD_OK;
}
