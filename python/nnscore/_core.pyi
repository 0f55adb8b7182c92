"""Type stubs of the compiled core (csrc/bindings)."""
import numpy as np
import numpy.typing as npt

def build_info() -> dict[str, object]: ...
def partials_dense_f32(
    y: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    x_half_sqnorm: npt.NDArray[np.float64],
    log_w: npt.NDArray[np.float64] | None,
    center: npt.NDArray[np.float32],
    sigma: npt.NDArray[np.float64],
    m: npt.NDArray[np.float64],
    z: npt.NDArray[np.float64],
    v: npt.NDArray[np.float64],
    q: npt.NDArray[np.float64],
    z2: npt.NDArray[np.float64],
    top1: npt.NDArray[np.int64],
    n_exact: npt.NDArray[np.int64],
    x_radius: float,
    fast_tol: float,
    log_cut: float,
    n_threads: int,
    simd_level: int,
) -> None: ...
def partials_dense_f64(
    y: npt.NDArray[np.float64],
    x: npt.NDArray[np.float64],
    x_half_sqnorm: npt.NDArray[np.float64],
    log_w: npt.NDArray[np.float64] | None,
    center: npt.NDArray[np.float64],
    sigma: npt.NDArray[np.float64],
    m: npt.NDArray[np.float64],
    z: npt.NDArray[np.float64],
    v: npt.NDArray[np.float64],
    q: npt.NDArray[np.float64],
    z2: npt.NDArray[np.float64],
    top1: npt.NDArray[np.int64],
    n_exact: npt.NDArray[np.int64],
    x_radius: float,
    fast_tol: float,
    log_cut: float,
    n_threads: int,
    simd_level: int,
) -> None: ...
