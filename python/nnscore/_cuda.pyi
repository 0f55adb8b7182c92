"""Type stubs of the optional CUDA module (csrc/bindings/module_cuda.cpp).

Pointers are device addresses as integers (``tensor.data_ptr()``), ``stream`` a cudaStream_t
handle (``torch.cuda.current_stream().cuda_stream``); ``log_w = 0`` means no weights.
"""

def device_count() -> int: ...
def multiprocessor_count(device: int) -> int: ...
def runtime_version() -> str: ...
def dense_tile_rows() -> int: ...
def synchronize(stream: int) -> None: ...
def dense_partials(
    dtype: str, y: int, x: int, center: int, half_sqnorm: int, log_w: int, sigma: int,
    M: int, N: int, d: int, radius: float, fast_tol: float, log_cut: float, log_w_max_abs: float,
    tf32: bool, force_exact: bool, accumulate_fp32: bool, n_splits: int, rows_per_split: int,
    ws_m: int, ws_z: int, ws_q: int, ws_z2: int, ws_z_gemm: int, ws_top1: int, ws_n_exact: int,
    ws_v: int, ws_est: int, ws_mode: int,
    out_m: int, out_z: int, out_v: int, out_q: int, out_z2: int, out_top1: int, out_n_exact: int,
    out_redo: int, stream: int,
) -> None: ...
def segment_partials(
    dtype: str, y: int, x: int, log_w: int, sigma: int, offsets: int, seg_start: int, seg_len: int,
    M: int, N: int, d: int, out_m: int, out_z: int, out_v: int, out_q: int, out_z2: int, out_top1: int,
    stream: int,
) -> None: ...
