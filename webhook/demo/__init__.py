"""The seed scenarios and the `coredump demo` command."""
