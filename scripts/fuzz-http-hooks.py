# schemathesis hooks for the stateful passes of scripts/fuzz-http.
#
# Publish, Activate and Rollback take an optional If-Match: the ETag of the
# active bundle, 412 unless it is still the active one. A made-up ETag never
# is, so a chain that reaches one of them with a generated If-Match ends in
# 412 however right its state. The links that have the ETag (from a read of
# the active bundle) give it; the hook leaves out only an If-Match the
# fuzzer made up, so the requests the links make are the ones a client
# following them would send.
#
# GetOpaBundle answers only for a namespace served to OPA, which the server
# of scripts/fuzz-http declares (fuzz-opa) and no generated name ever is:
# the hook asks for that one, so the pass reaches the bundle itself rather
# than its 404.
import schemathesis

COMPARE_AND_SWAP = {
    "PolicyService_Publish",
    "PolicyService_Activate",
    "PolicyService_Rollback",
}


@schemathesis.hook("map_headers")
def without_made_up_if_match(context, headers):
    if headers and context.operation.definition.raw.get("operationId") in COMPARE_AND_SWAP:
        headers.pop("If-Match", None)
    return headers


@schemathesis.hook("map_path_parameters")
def the_namespace_served_to_opa(context, path_parameters):
    if context.operation.definition.raw.get("operationId") == "BundleService_GetOpaBundle":
        path_parameters = dict(path_parameters or {}, namespace="fuzz-opa")
    return path_parameters
