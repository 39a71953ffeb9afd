// Fused cyclic shift + window partition, and window merge + reverse shift, for Swin.
//
// Both operations are pure gathers: every output element is one input element, so the
// kernels copy bytes and never do arithmetic on values. That makes them exact for any
// dtype; the host code admits float32, float16 and bfloat16.
//
//   partition: x (B, H, W, C)  ->  windows (B*nW, wh, ww, C)
//       windows[b*nW + r*nWw + s, i, j, :] = x[b, (r*wh + i + sh) % H, (s*ww + j + sw) % W, :]
//     i.e. torch.roll(x, (-sh, -sw), (1, 2)) followed by the window partition.
//   merge:     windows (B*nW, wh, ww, C)  ->  x (B, H, W, C)
//       x[b, h, w, :] = windows[window of ((h - sh) mod H, (w - sw) mod W)]
//     i.e. the window merge followed by torch.roll(x, (sh, sw), (1, 2)).
//
// merge(shift) is the adjoint (and inverse) of partition(shift), so the backward of each
// operation is the other one with the same shift.

// Only c10 CUDA headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers,
// which a minimal CUDA toolkit (nvcc + cudart) does not ship.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <cstdint>

namespace {

struct Geometry {
  int64_t H, W;          // image height and width (multiples of the window)
  int64_t wh, ww;        // window height and width
  int64_t sh, sw;        // shift, already reduced to [0, H) and [0, W)
  int64_t n_win_w;       // windows per row: W / ww
  int64_t n_win;         // windows per image: (H / wh) * (W / ww)
};

// Row index (b, h, w) -> pixel offset in the window layout, for the pixel that the
// rolled image holds at (h, w). Used by merge: output pixel (b, h, w) reads from here.
__device__ __forceinline__ int64_t window_offset_of_image_pixel(int64_t b, int64_t h, int64_t w,
                                                                const Geometry& g) {
  int64_t hh = h - g.sh;
  if (hh < 0) hh += g.H;
  int64_t wq = w - g.sw;
  if (wq < 0) wq += g.W;
  const int64_t r = hh / g.wh, i = hh - r * g.wh;
  const int64_t s = wq / g.ww, j = wq - s * g.ww;
  return (((b * g.n_win + r * g.n_win_w + s) * g.wh + i) * g.ww + j);
}

// Pixel offset p in the window layout -> pixel offset in the image layout it reads from.
// Used by partition.
__device__ __forceinline__ int64_t image_offset_of_window_pixel(int64_t p, const Geometry& g) {
  const int64_t j = p % g.ww;
  int64_t t = p / g.ww;
  const int64_t i = t % g.wh;
  t /= g.wh;                      // global window index b*nW + r*nWw + s
  const int64_t b = t / g.n_win;
  const int64_t win = t - b * g.n_win;
  const int64_t r = win / g.n_win_w, s = win - r * g.n_win_w;
  int64_t h = r * g.wh + i + g.sh;
  if (h >= g.H) h -= g.H;
  int64_t w = s * g.ww + j + g.sw;
  if (w >= g.W) w -= g.W;
  return (b * g.H + h) * g.W + w;
}

// One thread copies one vector of type V; a pixel (a row of C elements) holds
// `vecs_per_pixel` such vectors.
template <typename V, bool kPartition>
__global__ void window_gather_kernel(const V* __restrict__ src, V* __restrict__ dst,
                                     int64_t total_vecs, int64_t vecs_per_pixel, Geometry g) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; o < total_vecs;
       o += stride) {
    const int64_t p = o / vecs_per_pixel;
    const int64_t v = o - p * vecs_per_pixel;
    int64_t q;
    if (kPartition) {
      q = image_offset_of_window_pixel(p, g);
    } else {
      const int64_t w = p % g.W;
      const int64_t t = p / g.W;
      const int64_t h = t % g.H;
      const int64_t b = t / g.H;
      q = window_offset_of_image_pixel(b, h, w, g);
    }
    dst[o] = src[q * vecs_per_pixel + v];
  }
}

template <typename V>
void launch_typed(const void* src, void* dst, int64_t pixels, int64_t pixel_bytes, const Geometry& g,
                  bool partition, cudaStream_t stream) {
  const int64_t vecs_per_pixel = pixel_bytes / static_cast<int64_t>(sizeof(V));
  const int64_t total = pixels * vecs_per_pixel;
  if (total == 0) return;
  constexpr int kThreads = 256;
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(wanted < 65535 * 8 ? wanted : 65535 * 8);
  if (partition) {
    window_gather_kernel<V, true><<<blocks, kThreads, 0, stream>>>(
        static_cast<const V*>(src), static_cast<V*>(dst), total, vecs_per_pixel, g);
  } else {
    window_gather_kernel<V, false><<<blocks, kThreads, 0, stream>>>(
        static_cast<const V*>(src), static_cast<V*>(dst), total, vecs_per_pixel, g);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The widest copy unit that divides the pixel size and the alignment of both pointers.
void launch(const void* src, void* dst, int64_t pixels, int64_t pixel_bytes, const Geometry& g,
            bool partition, cudaStream_t stream) {
  const uintptr_t align = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) |
                          static_cast<uintptr_t>(pixel_bytes);
  if (align % 16 == 0) {
    launch_typed<uint4>(src, dst, pixels, pixel_bytes, g, partition, stream);
  } else if (align % 8 == 0) {
    launch_typed<uint2>(src, dst, pixels, pixel_bytes, g, partition, stream);
  } else if (align % 4 == 0) {
    launch_typed<uint32_t>(src, dst, pixels, pixel_bytes, g, partition, stream);
  } else if (align % 2 == 0) {
    launch_typed<uint16_t>(src, dst, pixels, pixel_bytes, g, partition, stream);
  } else {
    launch_typed<uint8_t>(src, dst, pixels, pixel_bytes, g, partition, stream);
  }
}

void check_dtype(const torch::Tensor& t) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "swin_window_process: expected float32, float16 or bfloat16, got ", st);
}

Geometry make_geometry(int64_t H, int64_t W, int64_t wh, int64_t ww, int64_t sh, int64_t sw) {
  TORCH_CHECK(wh > 0 && ww > 0, "swin_window_process: window size must be positive");
  TORCH_CHECK(H > 0 && W > 0, "swin_window_process: empty image (H, W = ", H, ", ", W, ")");
  TORCH_CHECK(H % wh == 0 && W % ww == 0, "swin_window_process: H, W = ", H, ", ", W,
              " must be multiples of the window size ", wh, ", ", ww, " (pad first)");
  Geometry g;
  g.H = H;
  g.W = W;
  g.wh = wh;
  g.ww = ww;
  g.sh = ((sh % H) + H) % H;
  g.sw = ((sw % W) + W) % W;
  g.n_win_w = W / ww;
  g.n_win = (H / wh) * g.n_win_w;
  return g;
}

}  // namespace

torch::Tensor roll_partition_cuda(const torch::Tensor& x_in, int64_t shift_h, int64_t shift_w,
                                  int64_t window_h, int64_t window_w) {
  TORCH_CHECK(x_in.is_cuda(), "swin_window_process: input must be a CUDA tensor");
  TORCH_CHECK(x_in.dim() == 4, "swin_window_process: expected x of shape (B, H, W, C), got ",
              x_in.sizes());
  check_dtype(x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const Geometry g = make_geometry(H, W, window_h, window_w, shift_h, shift_w);
  auto out = torch::empty({B * g.n_win, window_h, window_w, C}, x.options());
  launch(x.data_ptr(), out.data_ptr(), B * H * W, C * static_cast<int64_t>(x.element_size()), g,
         /*partition=*/true, c10::cuda::getCurrentCUDAStream());
  return out;
}

torch::Tensor merge_roll_cuda(const torch::Tensor& windows_in, int64_t H, int64_t W, int64_t shift_h,
                              int64_t shift_w) {
  TORCH_CHECK(windows_in.is_cuda(), "swin_window_process: input must be a CUDA tensor");
  TORCH_CHECK(windows_in.dim() == 4,
              "swin_window_process: expected windows of shape (B*nW, wh, ww, C), got ",
              windows_in.sizes());
  check_dtype(windows_in);
  const c10::cuda::CUDAGuard guard(windows_in.device());
  const auto windows = windows_in.contiguous();
  const int64_t wh = windows.size(1), ww = windows.size(2), C = windows.size(3);
  const Geometry g = make_geometry(H, W, wh, ww, shift_h, shift_w);
  TORCH_CHECK(windows.size(0) % g.n_win == 0, "swin_window_process: ", windows.size(0),
              " windows is not a multiple of ", g.n_win, " windows per image");
  const int64_t B = windows.size(0) / g.n_win;
  auto out = torch::empty({B, H, W, C}, windows.options());
  launch(windows.data_ptr(), out.data_ptr(), B * H * W, C * static_cast<int64_t>(windows.element_size()),
         g, /*partition=*/false, c10::cuda::getCurrentCUDAStream());
  return out;
}
