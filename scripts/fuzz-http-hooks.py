# schemathesis hooks for the workflow and OPA passes of scripts/fuzz-http.
#
# Publish, Activate and Rollback take an optional If-Match: the ETag of the
# active bundle, 412 unless it is still the active one. A made-up ETag never
# is, so a chain that reaches one of them with a generated If-Match ends in
# 412 however right its state. The links that have the ETag (from a read of
# the active bundle) give it; the hook leaves out only an If-Match the
# fuzzer made up, so the requests the links make are the ones a client
# following them would send.
#
# OPA's operations answer only for a namespace served to OPA, which the
# server of scripts/fuzz-http declares (fuzz-opa) and no generated name
# ever is: the hooks ask for that one, so the pass reaches the bundle, the
# discovery bundle, the status report, the decision logs and their listing
# rather than their 404. They call as one OPA would, named fuzz-opa-1 in
# its discovery and bundle resources (runtime.id) and in its reports' and
# uploads' paths: a status report or a decision log is taken only from a
# runtime that has asked for its bundle under its name (else 400), which a
# generated name never has. scripts/fuzz-http asks for the bundle in a
# pass before the reports'.
import schemathesis

COMPARE_AND_SWAP = {
    "PolicyService_Publish",
    "PolicyService_Activate",
    "PolicyService_Rollback",
}
OPA_NAMESPACE = "fuzz-opa"
OPA_RUNTIME = "fuzz-opa-1"


def operation_id(context):
    return context.operation.definition.raw.get("operationId")


@schemathesis.hook("map_headers")
def without_made_up_if_match(context, headers):
    if headers and operation_id(context) in COMPARE_AND_SWAP:
        headers.pop("If-Match", None)
    return headers


@schemathesis.hook("map_path_parameters")
def the_namespace_served_to_opa(context, path_parameters):
    operation = operation_id(context)
    if operation in {"BundleService_GetOpaBundle", "BundleService_GetOpaDiscovery", "PolicyService_ListDecisions"}:
        path_parameters = dict(path_parameters or {}, namespace=OPA_NAMESPACE)
    elif operation in {"BundleService_ReportOpaStatus", "BundleService_UploadOpaDecisions"}:
        path_parameters = dict(path_parameters or {}, namespace=OPA_NAMESPACE, runtime_id=OPA_RUNTIME)
    return path_parameters


@schemathesis.hook("map_query")
def the_opa_asking(context, query):
    if operation_id(context) in {"BundleService_GetOpaBundle", "BundleService_GetOpaDiscovery"}:
        query = dict(query or {}, **{"runtime.id": OPA_RUNTIME})
    return query
