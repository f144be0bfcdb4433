"""nvcc via genrule: compile a .cu (kernels + host launchers) to a PIC object."""

NVCC = "/usr/local/cuda/bin/nvcc"

# Only CUDA targets: skipped in the default build, built with --config=cuda.
CUDA_ONLY = select({
    "//build_defs:cuda_enabled": [],
    "//conditions:default": ["//build_defs:incompatible"],
})

def if_cuda(if_true, if_false = []):
    """select() on --config=cuda. Reference @cuda//... only through this, so a
    machine without /usr/local/cuda can still load every package."""
    return select({
        "//build_defs:cuda_enabled": if_true,
        "//conditions:default": if_false,
    })

def cuda_object(name, src, hdrs = [], archs = ["80", "90"], copts = []):
    """Produces <name>.pic.o (fatbin with SASS for each sm_XX in archs)."""
    gencode = " ".join(["-gencode arch=compute_%s,code=sm_%s" % (a, a) for a in archs])
    native.genrule(
        name = name,
        srcs = [src] + hdrs,
        outs = [name + ".pic.o"],
        cmd = " ".join([
            NVCC,
            "-ccbin /usr/bin/g++",
            "-c -O3 -std=c++20 -Xcompiler -fPIC",
            "--expt-relaxed-constexpr",
            "-I.",
            gencode,
        ] + copts + ["-o $@", "$(location %s)" % src]),
        message = "nvcc %s (sm_%s)" % (src, ",sm_".join(archs)),
        # `bazel build //...` without --config=cuda must not need nvcc.
        target_compatible_with = CUDA_ONLY,
    )
