/*
 * rpc.h - the handlers of quantd.v1.Quantd and grpc.health.v1.Health: one per RPC, each
 * turning a protobuf request into one call of the service core (service.h) and its answer
 * back into protobuf. The method table they form is what the transport (server.h) serves.
 *
 * Usage:
 *     struct qd_rpc *rpc;
 *     qd_rpc_create(svc, &cfg, &rpc, &err);
 *     size_t n;
 *     const qd_rpc_method *m = qd_rpc_methods(&n);
 *     opt.methods = m; opt.n_methods = n; opt.app = rpc;   then qd_server_start(&opt, ...)
 *     ... on SIGHUP: qd_rpc_reload(rpc, &new_cfg) ...
 *     after qd_server_free(): qd_rpc_free(rpc);
 */
#ifndef QD_RPC_H
#define QD_RPC_H

#include <stddef.h>

#include "config.h"
#include "error.h"
#include "server.h"

struct qd_service;
struct qd_rpc;

/* The handlers' shared state: the service and the limits they enforce. svc is borrowed and
 * must outlive the server. */
qd_err qd_rpc_create(struct qd_service *svc, const qd_config *cfg, struct qd_rpc **ret,
                     qd_error *err);
/* Take the reloadable limits of a new config (limits.chunk_bytes). */
void qd_rpc_reload(struct qd_rpc *rpc, const qd_config *cfg);
/* Accepts NULL. Only after the server that used it is freed. */
void qd_rpc_free(struct qd_rpc *rpc);

/* The method table: every RPC of quantd.v1.Quantd plus grpc.health.v1.Health/Check and
 * Watch, with their paths and streaming kinds (proto/README.md lists them). Static. */
const qd_rpc_method *qd_rpc_methods(size_t *ret_n);

#endif /* QD_RPC_H */
