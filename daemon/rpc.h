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
 *     ... on SIGHUP: qd_rpc_auth_load(&new_cfg, &auth, &err), then
 *                    qd_rpc_reload(rpc, &new_cfg, auth) ...
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
/* The bearer tokens of a config: auth.tokens plus the entries of auth.token_file. */
struct qd_rpc_auth;

/*
 * Authentication: every call but grpc.health.v1.Health's (probes) must carry the metadata
 * "authorization: Bearer TOKEN" whose sha256 is one of the configured entries, and the
 * entry's role must cover the method: read (Get*, List*, Watch*, StatModel, GetServerInfo),
 * submit (read + PutModel, Quantize, CancelJob), admin (submit + DeleteArtifact). Refused
 * before any handler runs: UNAUTHENTICATED "missing or invalid bearer token" (the token is
 * never echoed), or PERMISSION_DENIED naming the role needed and the method. With neither
 * auth.tokens nor auth.token_file set, authentication is off.
 *
 * Owners: the entry that matched names the caller (its NAME, else "token:" + the first 12 hex
 * digits of its hash); an admin entry, or authentication off, sees everything. Each handler
 * hands that caller to the service, which shows read and submit tokens only their own jobs,
 * artifacts and bundles (service.h, "Owners"; the rule of each RPC is in proto/README.md).
 */
/* Read cfg's tokens and token file; errors name the file and line. */
qd_err qd_rpc_auth_load(const qd_config *cfg, struct qd_rpc_auth **ret, qd_error *err);
/* Accepts NULL. */
void qd_rpc_auth_free(struct qd_rpc_auth *auth);

/* The handlers' shared state: the service, the limits they enforce and the tokens (loaded
 * from cfg). svc is borrowed and must outlive the server. */
qd_err qd_rpc_create(struct qd_service *svc, const qd_config *cfg, struct qd_rpc **ret,
                     qd_error *err);
/* Take the reloadable limits of a new config (limits.chunk_bytes) and, when auth is not
 * NULL, its tokens (taken; load them first with qd_rpc_auth_load, so that a token file that
 * does not load leaves the running tokens in place). */
void qd_rpc_reload(struct qd_rpc *rpc, const qd_config *cfg, struct qd_rpc_auth *auth);
/* Accepts NULL. Only after the server that used it is freed. */
void qd_rpc_free(struct qd_rpc *rpc);

/* The method table: every RPC of quantd.v1.Quantd plus grpc.health.v1.Health/Check and
 * Watch, with their paths and streaming kinds (proto/README.md lists them). Static. */
const qd_rpc_method *qd_rpc_methods(size_t *ret_n);

#endif /* QD_RPC_H */
