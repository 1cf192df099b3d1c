"""Authentication and authorization at the edge: every call's TLS client certificate must be
pinned in the roster, with a role allowed for the method. Servicers never check permissions."""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc

from jointstats.audit import AuditLog
from jointstats.errors import AuthError
from jointstats.keys import Member, Roster
from jointstats.transport import caller_fingerprint

log = logging.getLogger(__name__)

ANALYST = ("analyst",)
NODE = ("node", "compute")
METHOD_ROLES: dict[str, tuple[str, ...]] = {
    "Submit": ANALYST,
    "GetStatus": ANALYST,
    "GetResult": ANALYST,
    "ListNodes": ANALYST,
    "Plan": ANALYST,
    "Connect": NODE,
    "Relay": NODE,
}

_caller: contextvars.ContextVar[Member] = contextvars.ContextVar("caller")


def current_caller() -> Member:
    """The authenticated member making the current call."""
    return _caller.get()


class RosterAuth(grpc.aio.ServerInterceptor):
    def __init__(self, roster: Roster, audit: AuditLog | None = None) -> None:
        self._roster = roster
        self._audit = audit

    def _authorize(self, method: str, context: grpc.ServicerContext) -> Member:
        try:
            member = self._roster.by_fingerprint(caller_fingerprint(context))
        except AuthError:
            member = None
        if member is None:
            raise AuthError("certificate is not in the federation roster")
        allowed = METHOD_ROLES.get(method, ())
        if member.role not in allowed:
            raise AuthError(f"{member.name} (role {member.role}) may not call {method}")
        return member

    async def intercept_service(self, continuation: Callable, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _deny(self, context: grpc.aio.ServicerContext, error: AuthError, method: str) -> None:
        log.warning("AUTH_REFUSED method=%s reason=%s", method, error)
        if self._audit is not None:
            self._audit.append(
                "AUTH_REFUSED", method=method, reason=str(error), peer=context.peer()
            )
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))

    def _wrap_unary(self, method: str, behavior: Callable) -> Callable:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                _caller.set(self._authorize(method, context))
            except AuthError as error:
                await self._deny(context, error, method)
            return await behavior(request, context)

        return wrapped

    def _wrap_stream(self, method: str, behavior: Callable) -> Callable:
        async def wrapped(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                _caller.set(self._authorize(method, context))
            except AuthError as error:
                await self._deny(context, error, method)
            result = behavior(requests, context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            else:
                await result

        return wrapped
