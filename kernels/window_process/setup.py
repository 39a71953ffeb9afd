"""Build the fused Swin window kernels as the extension ``swin_window_process``.

    cd kernels/window_process && python setup.py install        # or: pip install --no-build-isolation .

Needs nvcc whose major version matches the CUDA of the installed PyTorch. Set
TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0") to choose the GPU architectures; by default
PyTorch builds for the GPUs it sees, or for a broad list when it sees none.
"""
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))

setup(
    name="swin_window_process",
    version="0.1.0",
    description="Fused cyclic shift + window partition (and its reverse) for Swin Transformer",
    ext_modules=[
        CUDAExtension(
            name="swin_window_process",
            sources=[
                os.path.relpath(os.path.join(HERE, "window_process.cpp")),
                os.path.relpath(os.path.join(HERE, "window_process_kernel.cu")),
            ],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"]},
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
