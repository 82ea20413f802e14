"""Evaluates flags through the official OpenFeature Python SDK and its OFREP
provider against an agent, for tests/api/openfeature.rs: the evaluations are
a JSON array in the last argument, each

    {"type": "boolean"|"string"|"integer"|"float"|"object", "key", "default",
     "context"?}

and one JSON line per evaluation is printed: {value, variant, reason,
errorCode, metadata}. AGENT is the agent's base URL, AGENT_TOKEN its bearer
token if it asks for one; the SDK is on PYTHONPATH.
"""

import json
import os
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def main() -> None:
    token = os.environ.get("AGENT_TOKEN")
    api.set_provider(
        OFREPProvider(
            os.environ.get("AGENT", "http://127.0.0.1:7070"),
            headers_factory=lambda: {"Authorization": f"Bearer {token}"} if token else {},
        )
    )
    client = api.get_client()
    read = {
        "boolean": client.get_boolean_details,
        "string": client.get_string_details,
        "integer": client.get_integer_details,
        "float": client.get_float_details,
        "object": client.get_object_details,
    }
    for evaluation in json.loads(sys.argv[-1]):
        context = dict(evaluation.get("context", {}))
        targeting_key = context.pop("targetingKey", None)
        details = read[evaluation["type"]](
            evaluation["key"],
            evaluation["default"],
            EvaluationContext(targeting_key=targeting_key, attributes=context),
        )
        print(
            json.dumps(
                {
                    "value": details.value,
                    "variant": details.variant,
                    "reason": getattr(details.reason, "value", details.reason),
                    "errorCode": getattr(details.error_code, "value", details.error_code),
                    "metadata": dict(details.flag_metadata),
                }
            ),
            flush=True,
        )
    api.shutdown()


if __name__ == "__main__":
    main()
