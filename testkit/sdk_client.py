"""`globus_compute_sdk.Client` substituted at its interface for function registration (the
Globus web service is the one part absent offline): `register_function` builds the SDK's own
registration payload (FunctionRegistrationData, with the SDK's default serializer, as the real
Client sends it) and answers with a new function id. Tests take it through the `sdk_client`
fixture (tests/conftest.py)."""

from __future__ import annotations

import uuid
from typing import Any


class RecordingClient:
    registered: list[dict[str, Any]] = []  # each registration's payload and the id it got

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def register_function(
        self,
        function: Any,
        description: str | None = None,
        metadata: dict | None = None,
        public: bool = False,
        group: str | None = None,
        ha_endpoint_id: str | None = None,
    ) -> str:
        from globus_compute_sdk.sdk.client import FunctionRegistrationData

        data = FunctionRegistrationData(
            function=function,
            description=description,
            public=public,
            group=group,
            ha_endpoint_id=ha_endpoint_id,
        ).to_dict()
        function_id = str(uuid.uuid4())
        RecordingClient.registered.append({"function_id": function_id, **data})
        return function_id
