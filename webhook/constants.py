"""Names shared by the webhook, the node agent, the wrapper and the inspection CLI.

Everything here is a public contract: the webhook writes these names into pods, the node
agent and the CLI read them back. Changing one breaks pods admitted by an older version.
"""

from __future__ import annotations

# --- Annotations the user sets -------------------------------------------------------------
#: ACS annotation (the seed document). Wins over the ECI one when both are set and differ.
ANN_PATTERN = "alibabacloud.com/core-pattern"
#: ECI annotation (the seed document).
ANN_PATTERN_ECI = "k8s.aliyun.com/eci-core-pattern"
#: Both pattern annotations, in order of precedence.
PATTERN_ANNOTATIONS = (ANN_PATTERN, ANN_PATTERN_ECI)

#: Our own annotation prefix.
PREFIX = "coredump-webhook.io/"
#: Comma-separated names of the containers to prepare (default: every regular container).
ANN_CONTAINERS = PREFIX + "containers"
#: "true" to also prepare every init container, or a comma-separated list of init container names.
ANN_INIT_CONTAINERS = PREFIX + "init-containers"
#: The volume to create when no user volume covers the pattern directory:
#: "emptyDir", "nfs:SERVER:/PATH" or "pvc:CLAIM".
ANN_VOLUME = PREFIX + "volume"
#: Hex value written to /proc/self/coredump_filter by the wrapper, e.g. "0x33".
ANN_COREDUMP_FILTER = PREFIX + "coredump-filter"
#: Maximum core size for this pod, bytes with an optional K/M/G/T suffix (agent honours it
#: up to its own node maximum).
ANN_MAX_SIZE = PREFIX + "max-size"
#: "zstd" to compress cores of this pod (file name gains ".zst"), "none" for raw.
ANN_COMPRESS = PREFIX + "compress"
#: (set by `coredump gcore`, read by the node agent) JSON {"id", "container", "pid", "requestedAt"}:
#: the agent on the pod's node snapshots that process with gcore into the pod's volume and
#: answers with a EVENT_REASON_SNAPSHOT Event naming the request id.
ANN_GCORE_REQUEST = PREFIX + "gcore-request"

# --- Annotations the webhook writes --------------------------------------------------------
#: Set to STATUS_INJECTED once a pod has been mutated: makes the mutation idempotent.
ANN_STATUS = PREFIX + "status"
STATUS_INJECTED = "injected"
#: The effective, validated pattern (the agent can read it from the API as well as from env).
ANN_EFFECTIVE_PATTERN = PREFIX + "pattern"
#: JSON list of the prepared container names.
ANN_TARGETS = PREFIX + "targets"
#: Name of the volume that holds the cores ("<volume>@<mountPath>").
ANN_CORE_VOLUME = PREFIX + "core-volume"
#: Why no core of the pod can be written (a read-only mount at the pattern's directory), for
#: `coredump list` and whoever reads the pod; absent when the cores have somewhere to go.
ANN_UNWRITABLE = PREFIX + "unwritable"

# --- Environment of every prepared container (the agent's registration) -------------------
#: The validated core(5) pattern (absolute path or relative to the process cwd).
ENV_PATTERN = "COREDUMP_PATTERN"
#: Downward API: metadata.name (filled at pod creation, so Deployment pods get theirs).
ENV_POD_NAME = "COREDUMP_POD_NAME"
#: Downward API: metadata.namespace.
ENV_POD_NAMESPACE = "COREDUMP_POD_NAMESPACE"
#: Downward API: metadata.uid (cross-checked against the process cgroup by the agent).
ENV_POD_UID = "COREDUMP_POD_UID"
#: Literal container name.
ENV_CONTAINER_NAME = "COREDUMP_CONTAINER_NAME"
#: Downward API: spec.nodeName.
ENV_NODE_NAME = "COREDUMP_NODE_NAME"
#: Copied from ANN_MAX_SIZE when set.
ENV_MAX_SIZE = "COREDUMP_MAX_SIZE"
#: Copied from ANN_COMPRESS when set.
ENV_COMPRESS = "COREDUMP_COMPRESS"
#: Copied from ANN_COREDUMP_FILTER when set; read by the wrapper.
ENV_COREDUMP_FILTER = "COREDUMP_FILTER"
#: Every variable above, in the order the webhook injects them.
REGISTRATION_ENV = (
    ENV_PATTERN,
    ENV_POD_NAME,
    ENV_POD_NAMESPACE,
    ENV_POD_UID,
    ENV_CONTAINER_NAME,
    ENV_NODE_NAME,
    ENV_MAX_SIZE,
    ENV_COMPRESS,
    ENV_COREDUMP_FILTER,
)
#: "1" makes the wrapper log its RLIMIT_CORE steps on stderr (for debugging; never injected).
ENV_WRAPPER_DEBUG = "COREDUMP_WRAPPER_DEBUG"

# --- Objects the webhook injects -----------------------------------------------------------
#: emptyDir holding the static ulimit wrapper, shared by the init container and targets.
WRAPPER_VOLUME = "coredump-webhook-bin"
#: Where that volume is mounted in every container.
WRAPPER_DIR = "/.coredump-webhook"
#: The wrapper's path inside target containers.
WRAPPER_PATH = WRAPPER_DIR + "/coredump-wrapper"
#: Name of the init container that installs the wrapper.
INSTALLER_CONTAINER = "coredump-webhook-install"
#: Path of the wrapper inside the project's own image.
IMAGE_WRAPPER_PATH = "/usr/local/libexec/coredump-webhook/coredump-wrapper"
#: Path of the kernel helper inside the project's own image.
IMAGE_HELPER_PATH = "/usr/local/libexec/coredump-webhook/coredump-helper"
#: The wrapper's install mode: `coredump-wrapper --coredump-install DEST` copies itself to DEST.
WRAPPER_INSTALL_FLAG = "--coredump-install"
#: The wrapper's read-only listing mode (`coredump list` without a shell in the container):
#: `coredump-wrapper --coredump-list DIR...` prints every *.json metadata file below DIR, framed
#: (format in webhook/native/coredump-wrapper.c, parsed by webhook/inspect/listing.py).
WRAPPER_LIST_FLAG = "--coredump-list"
#: First line of that listing: names the framing and its version.
WRAPPER_LIST_MAGIC = "coredump-list/1"
#: The wrapper's read-only download mode (`coredump get` without tail in the container):
#: `coredump-wrapper --coredump-cat FILE [OFFSET]` writes a regular file from OFFSET to stdout.
WRAPPER_CAT_FLAG = "--coredump-cat"
#: Base name of the injected core volume (a suffix is added on collision).
CORE_VOLUME = "coredump-webhook-cores"

# --- Node agent ----------------------------------------------------------------------------
#: Default host directory of the agent (hostPath in the DaemonSet).
DEFAULT_HOST_DIR = "/var/lib/coredump-webhook"
#: Metadata file suffix next to each core.
METADATA_SUFFIX = ".json"
#: Suffix of a core cut short.
PARTIAL_SUFFIX = ".partial"
#: Kubernetes Event reason for a saved core.
EVENT_REASON = "CoreDumped"
#: Kubernetes Event reason for a gcore snapshot (taken or failed) of a running process.
EVENT_REASON_SNAPSHOT = "CoreSnapshot"
#: Where `coredump page` listens unless told otherwise.
PAGE_DEFAULT_BIND = "127.0.0.1:8383"
