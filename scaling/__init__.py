"""The scaling-study toolkit. On import it keeps glibc's freed memory for reuse (scaling/host_memory.py),
before jax starts the threads that run XLA:CPU steps."""
from scaling import host_memory

host_memory.keep_freed_memory()
