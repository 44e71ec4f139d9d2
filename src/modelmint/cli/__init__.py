"""The `modelmint` command line (Typer + Rich)."""

import os

# OpenMP runtimes (PyTorch's and llama.cpp's each bundle one) read this once, when they
# load, so it is set here, before any command imports them. An idle OpenMP worker spins
# before it sleeps. The default 300,000 spins (about a millisecond) keep workers spinning
# between two dynamic batches, on the cores the event loop needs to answer one batch while
# the next computes (measured on 2 busy cores: 4-6x fewer texts/s). Sleeping
# at once (OMP_WAIT_POLICY=PASSIVE) instead costs a wake-up between every two operators of
# a forward pass: on a 2-vCPU Firecracker VM, MiniLM batches of 17 texts ran at 238
# texts/s against 335 spinning, and llama.cpp decoded 3.4x slower. 10,000 spins (tens of
# microseconds) bridge the gaps inside a forward pass and little more: 323 texts/s, and
# llama.cpp's speed unchanged.
OPENMP_ENV = {"GOMP_SPINCOUNT": "10000"}
for _name, _value in OPENMP_ENV.items():
    os.environ.setdefault(_name, _value)
