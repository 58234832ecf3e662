"""Undo TensorFlow's glibc malloc setting that slows every training step once a Python-fed input has started.

Keras' TensorFlow trainer feeds a PyDataset (our StoreStream) through
tf.data.Dataset.from_generator. The first time a process constructs TensorFlow's
GeneratorDataset kernel (TF 2.21: generator_dataset_op.cc, a function-local static in the
kernel's constructor, logged as "Memory patch applied: M_TRIM_THRESHOLD=128 kb was set",
though the call made is mallopt(M_MMAP_THRESHOLD, 128 KiB)), it changes glibc's setting to
stop a memory growth seen with Python 3.11 generators (tensorflow issue 65675). Setting a
threshold by hand switches off glibc's dynamic mmap threshold, so from then on every
allocation above 128 KiB in the whole process (each batch, each activation and gradient
buffer that TensorFlow's own kernels take from malloc) is a fresh mmap and munmap with a
page fault on every page: measured on a 2-core AMD EPYC with TensorFlow's own kernels
(oneDNN off, TensorFlow's default on x86 CPUs without AVX-512 VNNI/BF16 or AMX), ~76,000 minor faults
per training step of the deep CNN instead of ~5,000, and half the training rate. With
oneDNN's kernels, which keep their buffers, it costs little.

restore_malloc_thresholds() sets both thresholds back to the values glibc's dynamic rule
reaches for large blocks (mmap threshold at its 32 MiB ceiling, trim threshold twice
that), so big tensors are reused from the heap again. It must run after the kernel has
applied its patch, and again if a later TensorFlow applies it per pipeline: StoreStream
calls it on every batch and on every window it hands TensorFlow (fit_input), at under a
microsecond for the pair of mallopt calls, so the first element a generator pipeline asks for
puts the setting back, in every pipeline. Peak memory
stays flat over many epochs with it (BENCHMARKS.md). It does nothing where glibc is not
the C library (macOS, musl, Windows) and nothing until TensorFlow has been imported,
since only TensorFlow changes the setting.
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the ceiling of glibc's own dynamic threshold
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # glibc's dynamic rule keeps the trim threshold at twice the mmap threshold


@functools.cache
def _glibc_mallopt():
    """glibc's mallopt, or None where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # no C library to load by handle (Windows)
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def restore_malloc_thresholds() -> bool:
    """Put glibc's mmap and trim thresholds back to large values; True if it did."""
    if "tensorflow" not in sys.modules:
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) & mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
