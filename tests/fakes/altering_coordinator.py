"""A coordinator that raises the first released count by one in every result it serves."""

from __future__ import annotations

import json

from jointstats.cli import main
from jointstats.coordinator import server

_original_get_result = server.CoordinatorService.GetResult


async def _altering_get_result(self, request, context):
    reply = await _original_get_result(self, request, context)
    doc = json.loads(reply.result_json)
    position = doc["columns"].index("count")
    for row in doc["rows"]:
        if row[position] is not None:
            row[position] += 1
            break
    reply.result_json = json.dumps(doc).encode()
    return reply


if __name__ == "__main__":
    server.CoordinatorService.GetResult = _altering_get_result
    main()
