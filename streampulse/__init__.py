"""streampulse's command line and the jobs it runs; importing it holds numpy's OpenBLAS to one thread.

numpy starts OpenBLAS's thread pool when it is imported: a thread per core, which costs every process
0.14 CPU s before its first batch (the median `streampulse run` start on empty topics went from 0.74 to
0.60 CPU s over 10 alternating starts), and a cluster pays it once per process. Nothing here could use
the pool: the detector's matrix products are a few hundred numbers, below the size at which OpenBLAS
splits work over threads, and each process of a cluster already has a core's worth of work. So the
package sets `OPENBLAS_NUM_THREADS=1` before any of its modules imports numpy, unless the environment
sets it already.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
