"""``coredump debug``: gdb opened on the core, with its binaries found by build-id, as the core's owner.

Pure builders (plain dicts shaped like the Kubernetes API's JSON, tested with golden files and
``kubernetes-validate``):

- :func:`gdb_command`: the debug container's command. A POSIX ``sh`` script (dash, bash and
  busybox alike) that takes the core (or picks the newest one under ``$COREDUMP_DIR`` when
  none is named: a crash-looping container cannot be exec'd into to list them), then runs gdb
  with the agent's build-id store as a debuginfod server (``DEBUGINFOD_URLS=file://<dir>/.symbols``:
  gdb fetches the executable by the build-id recorded in the core) and ``<core>.sysroot`` as
  sysroot (the libraries at the paths the process saw, linked into the store). No hand-typed
  ``set sysroot``; extra arguments go to gdb (``-batch -ex bt``).
- :func:`security_context`: run as the core's owner (the crashing process's uid/gid: cores
  are 0600) with what Pod Security ``restricted`` requires.
- :func:`debug_pod`: for a deleted pod whose cores are on a claim, a short-lived pod that
  mounts it and runs the same command.
"""

from __future__ import annotations

from webhook.inspect.claim_pods import claim_pod

#: Where a debug pod mounts the claim.
DEBUG_POD_MOUNT = "/cores"
#: Label of the debug pods (find and clean them up).
DEBUG_POD_LABEL_VALUE = "coredump-debug"

#: $1: the core (a path, a name under $COREDUMP_DIR, or "" for the newest); the rest: gdb's.
GDB_SCRIPT = r"""
core="$1"; [ $# -gt 0 ] && shift
dir="${COREDUMP_DIR:-.}"
nl='
'
if [ -z "$core" ]; then
  # the newest core that has its metadata (not the store, not a sysroot)
  IFS="$nl"
  found=$(find "$dir" -maxdepth 6 -type f -name '*.json' ! -path '*/.symbols/*' ! -path '*.sysroot/*' 2>/dev/null \
    | while IFS= read -r m; do [ -f "${m%.json}" ] && printf '%s\n' "${m%.json}"; done)
  [ -n "$found" ] && core=$(ls -t $found | head -n 1)
  unset IFS
elif [ ! -e "$core" ] && [ -e "$dir/$core" ]; then
  core="$dir/$core"
elif [ ! -e "$core" ]; then
  # a path as the crashed container saw it (a claim mounted elsewhere): that name under $dir
  found=$(find "$dir" -maxdepth 6 -type f -name "$(basename "$core")" ! -path '*/.symbols/*' ! -path '*.sysroot/*' \
    2>/dev/null | head -n 1)
  [ -n "$found" ] && core="$found"
fi
if [ -z "$core" ] || [ ! -f "$core" ]; then
  echo "coredump debug: no core ${core:+$core }found under $dir; a shell instead" >&2
  exec sh
fi
case "$core" in
  *.zst)
    out="${TMPDIR:-/tmp}/$(basename "${core%.zst}")"
    if command -v zstd >/dev/null 2>&1; then zstd -q -d -f -o "$out" "$core" && core="$out"
    else echo "coredump debug: $core is compressed and zstd is missing" >&2; fi ;;
esac
base="${core%.zst}"; base="${base%.partial}"
sysroot="$base.sysroot"; [ -d "$sysroot" ] || sysroot="$core.sysroot"
store="$(dirname "$core")/.symbols"
if [ -d "$store/buildid" ]; then
  export DEBUGINFOD_URLS="file://$store"
  export DEBUGINFOD_CACHE_PATH="${TMPDIR:-/tmp}/coredump-debuginfod"
fi
set -- -q -iex "set debuginfod enabled on" "$@"
[ -d "$sysroot" ] && set -- -iex "set sysroot $sysroot" "$@"
echo "coredump debug: gdb on $core${DEBUGINFOD_URLS:+ (binaries by build-id from $store)}" >&2
exec gdb "$@" -c "$core"
""".strip() + "\n"


def gdb_command(core: str = "", gdb_args: list[str] | None = None) -> list[str]:
    """The debug container's command: gdb on ``core`` ("" = the newest under $COREDUMP_DIR)."""
    return ["sh", "-c", GDB_SCRIPT, "coredump-debug", core, *(gdb_args or [])]


def security_context(uid: int | None, gid: int | None) -> dict:
    """A container securityContext that passes Pod Security ``restricted``, as ``uid``/``gid``.

    ``runAsNonRoot`` only when the uid is known and not 0 (a root-owned core needs root: that
    pod then passes ``baseline`` only, which the API server reports plainly).
    """
    ctx: dict = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if uid is not None:
        ctx["runAsUser"] = uid
        if uid != 0:
            ctx["runAsNonRoot"] = True
    if gid is not None:
        ctx["runAsGroup"] = gid
    return ctx


def owner_from_pod(pod: dict, container: str) -> tuple[int | None, int | None]:
    """runAsUser/runAsGroup of ``container`` (else the pod's): whose the crashing process was."""
    spec = pod.get("spec") or {}
    pod_ctx = spec.get("securityContext") or {}
    ctx: dict = {}
    for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
        if c.get("name") == container:
            ctx = c.get("securityContext") or {}
    uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup"))
    return (uid if isinstance(uid, int) else None), (gid if isinstance(gid, int) else None)


def debug_pod(namespace: str, claim: str, *, image: str, name: str, uid: int | None, gid: int | None,
              core: str = "", deadline_seconds: int = 3600, pull_policy: str = "IfNotPresent") -> dict:
    """A pod that mounts ``claim`` read-only at /cores and runs gdb on ``core`` (or the newest).

    Attach to it (stdin, tty); it ends when gdb does (``restartPolicy: Never``) or after
    ``deadline_seconds``. No service account token, nothing writable but its own /tmp.
    """
    container = {
        "name": "debug",
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": gdb_command(core),
        "stdin": True,
        "tty": True,
        "workingDir": DEBUG_POD_MOUNT,
        "env": [{"name": "COREDUMP_DIR", "value": DEBUG_POD_MOUNT}],
        "volumeMounts": [{"name": "cores", "mountPath": DEBUG_POD_MOUNT, "readOnly": True}],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": security_context(uid, gid),
    }
    return claim_pod(namespace, name, claim, labels={"app.kubernetes.io/name": DEBUG_POD_LABEL_VALUE},
                     container=container, deadline_seconds=deadline_seconds)
