"""cffi build script for uvm's C core (out-of-line API mode).

The cdef Python sees is cext/uvm.h; the sources are the .c files beside it. liblz4 is
linked by its soname (the machine has liblz4.so.1 but no development headers; cext/lz4.h
declares the two functions used)."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["machine.c", "vm.c", "frame.c", "swap.c", "evict.c", "pager.c", "share.c", "guard.c",
           "sample.c", "workload.c", "lowmem.c", "sigfault.c"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "uvm.h").read_text())
ffibuilder.set_source(
    "uvm._core",
    '#include "core.h"\n',
    sources=[str(Path("cext") / s) for s in SOURCES],
    include_dirs=["cext"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    extra_link_args=["-l:liblz4.so.1", "-lpthread", "-lm"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
