"""hpcdesk's benchmarks on the dev cluster (numbers, never a failure). Run each from the
repository root as a module, e.g. `$HPCDESK_VENV/bin/python -m benchmarks.run`; they import
the shared harness (harness/: the dev cluster, the browser driver) like the tests do."""
