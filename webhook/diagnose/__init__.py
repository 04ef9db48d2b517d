"""Looking at a crashed or live process: crash signatures (gdb over a core) and gcore snapshots.

Used by both the node agent and the inspection CLI, so it imports neither."""
