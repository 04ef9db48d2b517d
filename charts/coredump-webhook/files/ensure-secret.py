# Step 1 of the certificate bootstrap (the chart's pre-install/pre-upgrade hook): create, reuse or
# rotate the serving Secret only. `coredump certs bootstrap` (step 2) would also patch the
# MutatingWebhookConfiguration, which does not exist before the release is installed.
# Reads the same COREDUMP_CERTS_* variables as `coredump certs bootstrap`.
import json, os, sys
from certs import kube
env = os.environ
settings = kube.BootstrapSettings(
    namespace=env["COREDUMP_CERTS_NAMESPACE"], service=env["COREDUMP_CERTS_SERVICE"],
    secret=env["COREDUMP_CERTS_SECRET"], webhook_config=env["COREDUMP_CERTS_WEBHOOK_CONFIG"],
    days=int(env["COREDUMP_CERTS_DAYS"]), renew_before_days=int(env["COREDUMP_CERTS_RENEW_BEFORE"]),
    request_timeout=float(env["COREDUMP_CERTS_TIMEOUT"]))
try:
    with kube.api_client() as api:
        bundle, action, reason = kube.ensure_secret(api, settings)
except kube.KubeError as exc:
    print(json.dumps({"event": "certs.secret.failed", "error": str(exc)}), file=sys.stderr)
    sys.exit(1)
print(json.dumps({"event": "certs.secret", "secret": action, "reason": reason,
                  "secretName": settings.secret, "namespace": settings.namespace}), file=sys.stderr)
