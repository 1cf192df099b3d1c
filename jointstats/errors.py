"""The one exception tree of jointstats, and its mapping to exit codes and gRPC status codes.

    JointstatsError                 exit 1   base: a one-line message that says what to fix
    ├── ConfigError                 exit 2   a config, key or roster file is missing or malformed
    ├── JobError                    exit 3   the job document is malformed or names unknown things
    ├── DataError                   exit 4   a dataset does not fit the job (missing column, domain)
    ├── AuthError                   exit 5   unknown certificate, wrong role, party impersonation
    ├── RefusedError                exit 6   a node's policy refused the job
    ├── PeerError                   exit 7   a peer or the coordinator failed or vanished
    │   ├── SessionTimeout          exit 8   an MPC session did not finish in time
    │   └── SessionMismatch         exit 7   parties were given different session descriptions
    ├── JobFailed                   exit 9   the job ended failed; the message carries the reason
    └── AuditError                  exit 10  an audit log is damaged or cannot be written

Messages never carry microdata values or counts: they name datasets, columns and nodes.
"""

from __future__ import annotations

import grpc


class JointstatsError(Exception):
    """Root of every error a user can see."""

    exit_code = 1
    grpc_code = grpc.StatusCode.INTERNAL


class ConfigError(JointstatsError):
    exit_code = 2
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class JobError(JointstatsError):
    exit_code = 3
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class DataError(JointstatsError):
    exit_code = 4
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class AuthError(JointstatsError):
    exit_code = 5
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class RefusedError(JointstatsError):
    exit_code = 6
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class PeerError(JointstatsError):
    exit_code = 7
    grpc_code = grpc.StatusCode.UNAVAILABLE


class SessionTimeout(PeerError):
    exit_code = 8
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class SessionMismatch(PeerError):
    """Two parties hold different descriptions of one session (a coordinator's doing)."""

    exit_code = 7


class JobFailed(JointstatsError):
    exit_code = 9
    grpc_code = grpc.StatusCode.ABORTED


class AuditError(JointstatsError):
    exit_code = 10
    grpc_code = grpc.StatusCode.DATA_LOSS


_BY_GRPC_CODE: dict[grpc.StatusCode, type[JointstatsError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: JobError,
    grpc.StatusCode.NOT_FOUND: JobError,
    grpc.StatusCode.PERMISSION_DENIED: AuthError,
    grpc.StatusCode.UNAUTHENTICATED: AuthError,
    grpc.StatusCode.UNAVAILABLE: PeerError,
    grpc.StatusCode.DEADLINE_EXCEEDED: SessionTimeout,
    grpc.StatusCode.FAILED_PRECONDITION: JobError,
    grpc.StatusCode.ABORTED: JobFailed,
}


def from_rpc_error(error: grpc.RpcError) -> JointstatsError:
    """Turn a failed gRPC call into the matching JointstatsError with a one-line message."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(code)
    if code == grpc.StatusCode.UNAVAILABLE:
        if "Socket closed" in details or "handshake" in details.lower():
            return AuthError(
                "the coordinator closed the TLS handshake: is this member's certificate in "
                "the coordinator's roster, and the coordinator's in ours?"
            )
        details = f"coordinator unreachable ({details.splitlines()[0]})"
    return _BY_GRPC_CODE.get(code, JointstatsError)(details.splitlines()[0])
