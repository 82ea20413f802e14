"""Reads verified policy through the agent with OpenFeature's OFREP provider."""

import os

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider

api.set_provider(OFREPProvider(os.environ.get("AGENT", "http://127.0.0.1:7070")))
client = api.get_client()

# One value: the JSON Pointer after namespace/policy.
max_amount = client.get_integer_value("payments/card-limits/maxAmount", 0)
# The whole policy, an object flag, with where it came from.
policy = client.get_object_details("payments/card-limits", {})
version, source = policy.flag_metadata["version"], policy.flag_metadata["source"]
print(f"maxAmount {max_amount}, version {version} ({policy.variant}) from the {source}")
api.shutdown()
