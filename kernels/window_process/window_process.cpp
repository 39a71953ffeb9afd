// Python bindings of the fused Swin window kernels (window_process_kernel.cu).
#include <torch/extension.h>

torch::Tensor roll_partition_cuda(const torch::Tensor& x, int64_t shift_h, int64_t shift_w,
                                  int64_t window_h, int64_t window_w);
torch::Tensor merge_roll_cuda(const torch::Tensor& windows, int64_t H, int64_t W, int64_t shift_h,
                              int64_t shift_w);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused cyclic shift + window partition / window merge + reverse shift for Swin";
  m.def("roll_partition", &roll_partition_cuda,
        "roll(x, (-shift_h, -shift_w), (1, 2)) then window partition: (B, H, W, C) -> "
        "(B*nW, window_h, window_w, C)",
        pybind11::arg("x"), pybind11::arg("shift_h"), pybind11::arg("shift_w"),
        pybind11::arg("window_h"), pybind11::arg("window_w"));
  m.def("merge_roll", &merge_roll_cuda,
        "window merge then roll(x, (shift_h, shift_w), (1, 2)): (B*nW, wh, ww, C) -> (B, H, W, C)",
        pybind11::arg("windows"), pybind11::arg("H"), pybind11::arg("W"), pybind11::arg("shift_h"),
        pybind11::arg("shift_w"));
}
